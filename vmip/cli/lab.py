"""``vmip lab``: placeholder until the lab lands (being written now)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="the network-namespace lab")
    p.set_defaults(func=lambda args: 2)
