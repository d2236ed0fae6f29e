"""``vmip check``: placeholder until the config loader lands (being written now)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("check", help="validate a node config")
    p.set_defaults(func=lambda args: 2)
