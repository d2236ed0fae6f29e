"""Static keying: SAs and policies from the config, as ``setkey`` does.

:func:`build_static` turns the config's ``[[keys.sa]]`` and ``[[policy]]``
entries (the config layer's ``SaConfig`` and ``PolicyConfig``, read by duck
typing) into :class:`~vmip.ipsec.sa.SaParams` and :class:`~vmip.ipsec.spd.Policy`
objects, and :func:`install` puts them in a SAD and an SPD.  The entries
arrive checked, their key material included: the config layer reads and
checks each key file once, when it loads the config (``enc_key``,
``auth_key``).  Nothing here opens a file or imports the config layer, which
sits above this one; what cannot work raises :class:`StaticKeysError`.

Reload (SIGHUP): :func:`reload_diff` compares what is installed with a
freshly built set, by name.  An SA whose parameters (keys included) are
unchanged is kept untouched, so its sequence numbers, replay window and
lifetime counters carry on; a changed SA is deleted and added again (new
keys are a new SA, RFC 4301 §4.4.2).  :func:`apply_reload` does it.

Restarts: a static key outlives the process, so its sequence numbers must
too (RFC 4303 §3.3.3; the AEAD IV is the sequence number, RFC 4106 §3.1).
:func:`open_state` opens the node's :class:`~vmip.ipsec.seqstate.SeqState`
(before privileges are dropped); :func:`install` and :func:`apply_reload`
attach every SA they add to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vmip.errors import LocatedError
from vmip.ipsec.sa import Direction, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.seqstate import DEFAULT_STATE_ROOT, SeqState
from vmip.ipsec.spd import SPD, Policy, Selector, SpdError
from vmip.log import get_logger

log = get_logger(__name__)


class StaticKeysError(LocatedError):
    """A static SA or policy that cannot be built, in one line like a config error
    (:class:`vmip.errors.LocatedError`: the config file, ``keys.sa[NAME]`` or
    ``policy[NAME]``, the problem, the hint).  Never holds key material."""


@dataclass(frozen=True)
class StaticKeys:
    """The SAs and policies a config describes, by name, in file order."""

    sas: dict[str, SaParams] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes; names refer to the old set (remove) or the new (add)."""

    remove_sas: tuple[SaParams, ...] = ()
    add_sas: tuple[SaParams, ...] = ()
    keep_sas: tuple[str, ...] = ()
    remove_policies: tuple[Policy, ...] = ()
    add_policies: tuple[Policy, ...] = ()
    keep_policies: tuple[str, ...] = ()
    #: The new set, for the next reload.
    result: StaticKeys = field(default_factory=StaticKeys)

    @property
    def changes_nothing(self) -> bool:
        return not (self.remove_sas or self.add_sas or self.remove_policies or self.add_policies)


def sa_params(sa, *, backend: str = "cryptography", source: str = "config") -> SaParams:
    """The :class:`SaParams` of one ``[[keys.sa]]`` entry (a checked ``SaConfig``)."""
    where = f"keys.sa[{sa.name}]"
    enc_key = _material(source, where, "key_file", sa.key_file, sa.enc_key)
    auth_key = _material(source, where, "auth_key_file", sa.auth_key_file, sa.auth_key)
    try:
        return SaParams(spi=sa.spi, direction=sa.direction, src=sa.src, dst=sa.dst,
                        suite=sa.suite, enc_key=enc_key, auth_key=auth_key, mode=sa.mode,
                        esn=sa.esn, replay_window=sa.replay_window, soft=sa.soft, hard=sa.hard,
                        backend=backend, name=sa.name, origin="static")
    except ValueError as exc:
        raise StaticKeysError(source, where, str(exc), "fix the SA's spi and addresses") from None


def _material(source: str, where: str, key: str, path, material: bytes | None) -> bytes:
    """The key read from *path* when the config was loaded; b"" when the suite has none."""
    if path is None:
        return b""
    if material is None:
        # A config loaded with check_key_files=False names its key files but
        # holds no keys; this layer never opens files to make up for it.
        raise StaticKeysError(source, f"{where}.{key}",
                              f"the key of {path} was not read with the config",
                              "load the config with its key files (load_config(path))")
    return bytes(material)


def policy(pc, *, source: str = "config") -> Policy:
    """The SPD entry of one ``[[policy]]`` (src/dst read as local/remote by direction)."""
    outbound = pc.direction is Direction.OUT
    local, remote = (pc.src, pc.dst) if outbound else (pc.dst, pc.src)
    local_ports, remote_ports = ((pc.src_ports, pc.dst_ports) if outbound
                                 else (pc.dst_ports, pc.src_ports))
    try:
        selector = Selector(local=local, remote=remote, proto=pc.protocol,
                            local_ports=local_ports, remote_ports=remote_ports,
                            icmp_type=pc.icmp_type, icmp_code=pc.icmp_code, mh_type=pc.mh_type)
        action = getattr(pc.action, "value", pc.action)  # config StrEnum or plain text
        return Policy(pc.name, pc.direction, selector, action, tuple(pc.sa), pc.priority)
    except SpdError as exc:
        raise StaticKeysError(source, f"policy[{pc.name}]", str(exc),
                              "see docs/configuration.md, [[policy]]") from None


def build_static(sas: Iterable = (), policies: Iterable = (), *, backend: str = "cryptography",
                 source: str = "config") -> StaticKeys:
    """Every SA and policy of a config; :class:`StaticKeysError` on the first problem."""
    built_sas: dict[str, SaParams] = {}
    for sa in sas:
        if sa.name in built_sas:
            raise StaticKeysError(source, f"keys.sa[{sa.name}]", "two SAs have this name",
                                  "give each SA its own name")
        built_sas[sa.name] = sa_params(sa, backend=backend, source=source)
    built_policies: dict[str, Policy] = {}
    for pc in policies:
        if pc.name in built_policies:
            raise StaticKeysError(source, f"policy[{pc.name}]", "two policies have this name",
                                  "give each policy its own name")
        built_policies[pc.name] = policy(pc, source=source)
    return StaticKeys(built_sas, built_policies)


def from_config(cfg) -> StaticKeys:
    """:func:`build_static` for a whole loaded config (the config layer's ``NodeConfig``)."""
    return build_static(cfg.keys.sa, cfg.policies, backend=cfg.keys.backend,
                        source=str(cfg.source))


def open_state(cfg) -> SeqState | None:
    """The sequence-number state of a static-keys node (``None`` with IKE keys).

    Call it before dropping privileges: the file stays open for the node's
    life and is never opened by path again.
    """
    if str(cfg.keys.mode) != "static":
        return None
    state_dir = getattr(cfg.keys, "state_dir", None) or DEFAULT_STATE_ROOT / cfg.node.name
    return SeqState.open(state_dir, cfg.node.name, static_sas=len(cfg.keys.sa))


def install(keys: StaticKeys, sad: SAD, spd: SPD, now: float, *,
            state: SeqState | None = None) -> None:
    """Add every SA to *sad* and every policy to *spd* (file order).

    With *state*, each SA resumes its persisted sequence numbers (and refuses
    to work if the state is unusable); without, SAs start at 1 (tests).
    """
    for params in keys.sas.values():
        esp = sad.add(params, now)
        if state is not None:
            state.attach(esp)
    for pol in keys.policies.values():
        spd.add(pol)
    log.info("static keys installed", sas=len(keys.sas), policies=len(keys.policies),
             **({"sequence_numbers_resumed": state.resumed} if state is not None else {}))


def reload_diff(old: StaticKeys, new: StaticKeys) -> ReloadPlan:
    """Which SAs and policies a reload from *old* to *new* removes, adds and keeps."""
    remove_sas, add_sas, keep_sas = _diff(old.sas, new.sas)
    remove_pol, add_pol, keep_pol = _diff(old.policies, new.policies)
    return ReloadPlan(remove_sas, add_sas, keep_sas, remove_pol, add_pol, keep_pol, new)


def _diff(old: dict, new: dict) -> tuple[tuple, tuple, tuple[str, ...]]:
    remove = tuple(item for name, item in old.items() if new.get(name) != item)
    add = tuple(item for name, item in new.items() if old.get(name) != item)
    keep = tuple(name for name, item in new.items() if old.get(name) == item)
    return remove, add, keep


def apply_reload(plan: ReloadPlan, sad: SAD, spd: SPD, now: float, *,
                 state: SeqState | None = None) -> None:
    """Carry out *plan*; SAs it keeps are not touched (nor is their state)."""
    for pol in plan.remove_policies:
        if pol.name in spd:
            spd.remove(pol.name)
    for params in plan.remove_sas:
        if sad.get(params.spi, params.direction, params.dst) is not None:
            esp = sad.esp(params.spi, params.direction, params.dst)
            if state is not None and esp is not None:
                state.detach(esp)
            sad.delete(params.spi, params.direction, params.dst, reason="reload")
    for params in plan.add_sas:
        esp = sad.add(params, now)
        if state is not None:
            state.attach(esp)
    for pol in plan.add_policies:
        spd.add(pol)
    _restore_file_order(plan.result, spd)
    log.info("static keys reloaded", sas_added=len(plan.add_sas),
             sas_removed=len(plan.remove_sas), sas_kept=len(plan.keep_sas),
             policies_added=len(plan.add_policies), policies_removed=len(plan.remove_policies))


def _restore_file_order(keys: StaticKeys, spd: SPD) -> None:
    """Re-add the static policies if edits broke "equal priority keeps file order".

    A re-added policy goes after its equals, wherever it was in the file;
    policies hold no state, so re-adding them all in file order is harmless.
    """
    names = list(keys.policies)
    position = {name: index for index, name in enumerate(names)}
    for direction in Direction:
        current = [p.name for p in spd.list(direction) if p.name in position]
        wanted = sorted(current, key=lambda n: (keys.policies[n].priority, position[n]))
        if current != wanted:
            break
    else:
        return
    for name in names:
        if name in spd:
            spd.remove(name)
    for pol in keys.policies.values():
        spd.add(pol)
