"""The IRO remap engine (draft-ebalard-mext-ipsec-ro-00 §5), sans-IO.

IRO replaces the Home Address option and the type 2 routing header with
per-SPI address rewriting just outside ESP (draft §3.1, §5): the SAs name
the HoA, the wire carries the CoA.  A rule (§5.2.1) has a direction, an SPI,
the field it looks at (source or destination), an expected on-wire address
(``::`` is a wildcard for source addresses) and the address to write
instead, which may be the keyword ``ancillary`` (outbound: take it from the
packet's ancillary data, §3.1 rules 1 and 3).  An inbound rule marked
``(ancillary)`` hands the on-wire address it replaced to MIPv6 (§5.1.1).

Where it runs (docs/design.md §4): :meth:`RemapEngine.outbound` after ESP, on
the SPI of the outermost ESP header; :meth:`RemapEngine.inbound` before ESP
("as the last step before being processed by the IPsec module", §5.1.2).
Only the two addresses of the fixed IPv6 header change: transport checksums
are inside ESP and were computed over the SA-level addresses, and ESP's ICV
does not cover the IPv6 header, so the rewrite is invisible to IPsec.

At most one source and one destination rule exist per (direction, SPI)
(§5.1.2 "at most one for each"); adding a second one replaces the first.
Rules live in one dict per direction keyed by SPI, with addresses packed in
advance, so a packet whose SPI has no rule costs one dict probe.

Decisions the draft leaves open (docs/iro-remap.md):

- Outbound, an expected-address mismatch leaves that field unchanged
  (§5.1.2 "If it matches, the remapping occurs").
- Inbound, a mismatch drops the packet, except when the on-wire address is
  already the address the rule would write (the SA-level address: the
  packet took the HA tunnel or the peer is at home), which passes unchanged.
  A packet that is neither would fail the RFC 4301 §5.2 selector check
  after decryption anyway (the draft's own note under §5.1.2 cites it);
  dropping it here saves the crypto and names the reason in ``counters``.
- An ``ancillary`` rule with no ancillary data leaves the field unchanged
  (§5.1.1 "used, if available"; §3.1 rule 3 "if not null"; the HoA test of
  §4.5.3 needs the MN's AOTR to leave from the HoA).  For source rules,
  ``RemapEngine(missing_ancillary="drop")`` drops instead.
- A rule may carry a ``fallback`` address for ``ancillary``: used when the
  packet has no ancillary data.  This is an extension of the draft's syntax
  ("remap. src: ancillary or CoA") for coarse SAs that carry MH and data
  alike (§5.1.3 first bullet), where the MH rule and the data rule of the
  draft would otherwise compete for the one slot per field.
- An incoming rule may expect a bounded set of addresses ("exp. src:
  {CoA1, CoA2}", at most :data:`MAX_EXPECTED`): with several bindings of one
  HoA (RFC 5648, one per link) its data may arrive from or at any bound CoA,
  and §5.1.2 still allows one rule per (direction, SPI, field).
"""

from __future__ import annotations

import enum
import re
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from ipaddress import AddressValueError, IPv6Address
from typing import Literal

from vmip.errors import VmipError
from vmip.ipsec.esp import esp_spi
from vmip.ipsec.sa import Direction
from vmip.mobility.ancillary import NOTHING_REMAPPED, UNSPECIFIED, Ancillary
from vmip.wire.proto import ESP

__all__ = [
    "ANCILLARY",
    "MAX_EXPECTED",
    "Direction",
    "Field",
    "RemapEngine",
    "RemapError",
    "RemapRule",
    "format_rule",
    "parse_rule",
    "parse_rules",
]

_IPV6_HEADER_LEN = 40
_ESP_SPI_LEN = 4
_SPI_MAX = 0xFFFFFFFF
_SPI = struct.Struct(">I")
_UNSPECIFIED_ADDRESS = IPv6Address(0)
#: Most addresses one incoming rule may expect: an RFC 5648 binding per link
#: of the MN, bounded as the HA's and CN's ``max_care_of_addresses`` is.
MAX_EXPECTED = 16


class RemapError(VmipError):
    """A remap rule that cannot exist, or rule text that does not parse."""


class Field(enum.Enum):
    """Which address of the IPv6 header a rule looks at and rewrites."""

    SRC = "src"
    DST = "dst"


class _Keyword(enum.Enum):
    ANCILLARY = "ancillary"

    def __repr__(self) -> str:
        return "ANCILLARY"


#: ``remap. src: ancillary``: the address comes from the packet's ancillary data.
ANCILLARY = _Keyword.ANCILLARY

RemapTarget = IPv6Address | Literal[_Keyword.ANCILLARY]


def _as_address(value: object, what: str) -> IPv6Address:
    if isinstance(value, IPv6Address):
        address = value
    elif isinstance(value, str):
        try:
            address = IPv6Address(value)
        except (AddressValueError, ValueError):
            raise RemapError(f"{what}: {value!r} is not an IPv6 address") from None
    else:
        raise RemapError(f"{what}: expected an IPv6 address, got {type(value).__name__}")
    if address.scope_id is not None:
        raise RemapError(f"{what}: {value} has a scope; on-wire addresses have none")
    return address


@dataclass(frozen=True)
class RemapRule:
    """One remapping rule, draft §5.2.1.

    ``expected``: the on-wire (outbound: SA-level) address the field must hold
    for the rule to apply; ``::`` accepts any source (draft: wildcard, source
    addresses only).  ``remap``: the address written instead, or
    :data:`ANCILLARY` (outbound only).  ``fallback``: for an ``ancillary``
    rule, the address to use when the packet has no ancillary data (``None``:
    leave the field alone).  ``copy_to_ancillary``: the "(ancillary)" mark of
    inbound rules, hand the replaced on-wire address to MIPv6.  ``owner``
    names who installed the rule, for listings and :meth:`RemapEngine.remove_owner`.
    ``also_expected``: incoming rules only, more addresses accepted like
    ``expected`` (the other bound CoAs of the HoA; ``expected`` is the
    primary one), at most :data:`MAX_EXPECTED` in all, never the wildcard.
    """

    direction: Direction
    spi: int
    field: Field
    expected: IPv6Address
    remap: RemapTarget
    copy_to_ancillary: bool = False
    owner: str = ""
    fallback: IPv6Address | None = None
    also_expected: tuple[IPv6Address, ...] = ()

    def __post_init__(self) -> None:
        direction = self.direction
        if not isinstance(direction, Direction):
            try:
                direction = Direction(direction)
            except ValueError:
                raise RemapError(f"direction must be 'in' or 'out', not {direction!r}") from None
            object.__setattr__(self, "direction", direction)
        field = self.field
        if not isinstance(field, Field):
            try:
                field = Field(field)
            except ValueError:
                raise RemapError(f"field must be 'src' or 'dst', not {field!r}") from None
            object.__setattr__(self, "field", field)
        spi = self.spi
        if isinstance(spi, bool) or not isinstance(spi, int) or not 1 <= spi <= _SPI_MAX:
            # RFC 4303 §2.1: SPI 0 never appears on the wire.  1-255 are
            # accepted so the draft's own examples (SPI 42...) can be written.
            raise RemapError(f"SPI must be an integer 1..{_SPI_MAX:#x}, not {spi!r}")
        expected = _as_address(self.expected, "expected address")
        object.__setattr__(self, "expected", expected)
        if expected == _UNSPECIFIED_ADDRESS and field is Field.DST:
            raise RemapError("the wildcard :: is for source addresses only (draft §5.2.1)")
        remap = self.remap
        if remap is ANCILLARY:
            if direction is Direction.IN:
                # Inbound, the address to write is the SA's own (§3.1 rules 2
                # and 4); ancillary data flows the other way (§5.1.1).
                raise RemapError("'remap: ancillary' is for outgoing rules only")
        else:
            remap = _as_address(remap, "remap address")
            if remap == _UNSPECIFIED_ADDRESS:
                raise RemapError("cannot remap to the unspecified address ::")
            object.__setattr__(self, "remap", remap)
        if self.fallback is not None:
            if remap is not ANCILLARY:
                raise RemapError("a fallback address only goes with 'remap: ancillary'")
            fallback = _as_address(self.fallback, "fallback address")
            if fallback == _UNSPECIFIED_ADDRESS:
                raise RemapError("the fallback address cannot be ::")
            object.__setattr__(self, "fallback", fallback)
        if not isinstance(self.copy_to_ancillary, bool):
            raise RemapError("copy_to_ancillary must be True or False")
        if self.copy_to_ancillary and direction is Direction.OUT:
            raise RemapError("'(ancillary)' marks incoming rules only (draft §5.2.1)")
        if not isinstance(self.owner, str):
            raise RemapError("owner must be a string")
        also = self.also_expected
        if also:
            if isinstance(also, (str, bytes)) or not isinstance(also, (tuple, list)):
                raise RemapError("also_expected must be a tuple of IPv6 addresses")
            if direction is Direction.OUT:
                # Outgoing rules expect the SA-level address, which is one.
                raise RemapError("a set of expected addresses is for incoming rules only")
            if expected == _UNSPECIFIED_ADDRESS:
                raise RemapError("the wildcard :: already accepts any source; it takes no set")
            if len(also) + 1 > MAX_EXPECTED:
                raise RemapError(f"a rule expects at most {MAX_EXPECTED} addresses, "
                                 f"not {len(also) + 1}")
            seen = {expected}
            checked = []
            for item in also:
                address = _as_address(item, "expected address")
                if address == _UNSPECIFIED_ADDRESS:
                    raise RemapError("the wildcard :: cannot be one of several expected addresses")
                if address in seen:
                    raise RemapError(f"expected address {address} is listed twice")
                seen.add(address)
                checked.append(address)
            object.__setattr__(self, "also_expected", tuple(checked))
        elif not isinstance(also, tuple):
            object.__setattr__(self, "also_expected", ())

    @property
    def key(self) -> tuple[Direction, int, Field]:
        return (self.direction, self.spi, self.field)

    @property
    def is_wildcard(self) -> bool:
        return self.expected == _UNSPECIFIED_ADDRESS

    @property
    def expected_addresses(self) -> tuple[IPv6Address, ...]:
        """Every address the rule expects, ``expected`` first."""
        return (self.expected, *self.also_expected)

    def names(self, address: IPv6Address) -> bool:
        """Does the rule mention *address* (expected, remap or fallback)?"""
        return address in (self.expected, self.remap, self.fallback) \
            or address in self.also_expected

    def __str__(self) -> str:
        return format_rule(self)


def format_rule(rule: RemapRule, *, with_owner: bool = False) -> str:
    """The draft's own syntax (§5.2.2), with real addresses.

    ``dir: out, SPI: 42, exp. src: 2001:db8::10, remap. src: ancillary``;
    an inbound copy is marked ``(ancillary)``; a fallback is written
    ``ancillary or ADDRESS``; several expected addresses ``{A, B}``.
    *with_owner* appends ``# owner``.
    """
    name = rule.field.value
    if rule.remap is ANCILLARY:
        target = "ancillary" if rule.fallback is None else f"ancillary or {rule.fallback}"
    else:
        target = str(rule.remap)
    if rule.copy_to_ancillary:
        target += " (ancillary)"
    if rule.also_expected:
        expected = "{" + ", ".join(str(a) for a in rule.expected_addresses) + "}"
    else:
        expected = str(rule.expected)
    text = (f"dir: {rule.direction.value}, SPI: {rule.spi}, exp. {name}: {expected}, "
            f"remap. {name}: {target}")
    if with_owner and rule.owner:
        text += f"  # {rule.owner}"
    return text


_RULE_TEXT = re.compile(
    r"\s*dir\s*:\s*(?P<direction>[a-z]+)\s*,"
    r"\s*SPI\s*:\s*(?P<spi>0x[0-9a-f]+|[0-9]+)\s*,"
    r"\s*exp\.\s*(?P<field>src|dst)\s*:\s*(?P<expected>\{[^{}]*\}|[^\s,{}]+)\s*,"
    r"\s*remap\.\s*(?P<remap_field>src|dst)\s*:\s*(?P<target>[^,#]*?)"
    r"\s*(?:#\s*(?P<owner>.*?)\s*)?",
    re.IGNORECASE,
)
_TARGET_TEXT = re.compile(
    r"(?P<value>[^\s()]+)(?:\s+or\s+(?P<fallback>[^\s()]+))?(?:\s*(?P<copy>\(ancillary\)))?",
    re.IGNORECASE,
)
_DIRECTION_WORDS = {"in": Direction.IN, "incoming": Direction.IN,
                    "out": Direction.OUT, "outgoing": Direction.OUT}


def parse_rule(text: str, names: Mapping[str, IPv6Address] | None = None, *,
               owner: str = "") -> RemapRule:
    """Read one rule written in the draft's syntax (§5.2.2); the inverse of :func:`format_rule`.

    *names* maps symbolic addresses (``HoA``, ``CoA2``...) to real ones, so
    the draft's examples can be used as they are written.  A trailing
    ``# text`` becomes the owner unless *owner* is given.  Raises
    :class:`RemapError`, and nothing else, on any text that is not a rule.
    """
    if not isinstance(text, str):
        raise RemapError(f"rule text must be a string, not {type(text).__name__}")
    match = _RULE_TEXT.fullmatch(text)
    if match is None:
        raise RemapError(f"not a remap rule: {text!r} (expected 'dir: in|out, SPI: N, "
                         "exp. src|dst: ADDRESS, remap. src|dst: ADDRESS|ancillary')")
    direction = _DIRECTION_WORDS.get(match["direction"].lower())
    if direction is None:
        raise RemapError(f"direction must be in or out, not {match['direction']!r}")
    field = Field(match["field"].lower())
    if match["remap_field"].lower() != field.value:
        raise RemapError(f"a rule checks and remaps the same field: exp. {field.value} "
                         f"but remap. {match['remap_field']}")
    spi = int(match["spi"], 0) if match["spi"].lower().startswith("0x") else int(match["spi"])
    target_match = _TARGET_TEXT.fullmatch(match["target"])
    if target_match is None:
        raise RemapError(f"remap value {match['target']!r}: expected an address, 'ancillary', "
                         "'ancillary or ADDRESS', optionally followed by '(ancillary)'")

    def address(token: str, what: str) -> IPv6Address:
        if names is not None and token in names:
            value = names[token]
            if not isinstance(value, IPv6Address):
                raise RemapError(f"{what}: name {token!r} maps to {value!r}, not an IPv6 address")
            return value
        return _as_address(token, what)

    value = target_match["value"]
    remap: RemapTarget
    fallback = None
    if value.lower() == "ancillary":
        remap = ANCILLARY
        if target_match["fallback"] is not None:
            fallback = address(target_match["fallback"], "fallback address")
    else:
        if target_match["fallback"] is not None:
            raise RemapError("'or ADDRESS' follows 'ancillary' only")
        remap = address(value, "remap address")
    expected_text = match["expected"]
    if expected_text.startswith("{"):
        tokens = [token.strip() for token in expected_text[1:-1].split(",")]
        if not all(tokens):
            raise RemapError(f"expected addresses {expected_text!r}: write '{{A, B}}', "
                             "addresses separated by commas")
        if len(tokens) > MAX_EXPECTED:
            raise RemapError(f"a rule expects at most {MAX_EXPECTED} addresses, "
                             f"not {len(tokens)}")
        expected = [address(token, "expected address") for token in tokens]
    else:
        expected = [address(expected_text, "expected address")]
    return RemapRule(direction, spi, field, expected[0],
                     remap, copy_to_ancillary=target_match["copy"] is not None,
                     owner=owner or (match["owner"] or ""), fallback=fallback,
                     also_expected=tuple(expected[1:]))


def parse_rules(text: str, names: Mapping[str, IPv6Address] | None = None, *,
                owner: str = "") -> list[RemapRule]:
    """Every rule of a multi-line text; blank lines and ``#`` comment lines are skipped."""
    if not isinstance(text, str):
        raise RemapError(f"rule text must be a string, not {type(text).__name__}")
    rules = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            rules.append(parse_rule(stripped, names, owner=owner))
    return rules


# A compiled rule: (expected or None for the wildcard, remap or None for
# ancillary, fallback or None, copy_to_ancillary), all addresses packed; a
# set of expected addresses is a tuple (looked at only when the first
# comparison fails, so a one-address rule costs what it did; at most
# MAX_EXPECTED short compares, and bytearray or memoryview slices compare too).
_Compiled = tuple[bytes | tuple[bytes, ...] | None, bytes | None, bytes | None, bool]


def _compile(rule: RemapRule | None) -> _Compiled | None:
    if rule is None:
        return None
    expected: bytes | tuple[bytes, ...] | None
    if rule.is_wildcard:
        expected = None
    elif rule.also_expected:
        expected = tuple(a.packed for a in rule.expected_addresses)
    else:
        expected = rule.expected.packed
    return (expected,
            None if rule.remap is ANCILLARY else rule.remap.packed,
            None if rule.fallback is None else rule.fallback.packed,
            rule.copy_to_ancillary)


MissingAncillary = Literal["pass", "drop"]


class RemapEngine:
    """The rule table and the per-packet rewrite, both directions.

    ``counters`` counts what happened to packets, by reason: ``*_remapped``
    (a packet had an address rewritten), ``malformed``, ``bad_ancillary``,
    ``ancillary_ambiguous``, ``out_src_mismatch``/``out_dst_mismatch``
    (outbound rule not applied), ``out_src_no_ancillary``/``out_dst_no_ancillary``
    (an ``ancillary`` rule found none and had no fallback),
    ``in_src_mismatch``/``in_dst_mismatch`` (inbound drop), and
    ``in_src_unchanged``/``in_dst_unchanged`` (the packet already carried the
    SA-level address).
    """

    def __init__(self, *, missing_ancillary: MissingAncillary = "pass") -> None:
        if missing_ancillary not in ("pass", "drop"):
            raise RemapError("missing_ancillary must be 'pass' or 'drop', "
                             f"not {missing_ancillary!r}")
        self.missing_ancillary: MissingAncillary = missing_ancillary
        self._drop_without_ancillary = missing_ancillary == "drop"
        self._rules: dict[tuple[Direction, int, Field], RemapRule] = {}
        # Per direction: SPI -> (compiled source rule, compiled destination rule).
        self._out: dict[int, tuple[_Compiled | None, _Compiled | None]] = {}
        self._in: dict[int, tuple[_Compiled | None, _Compiled | None]] = {}
        self.counters: Counter[str] = Counter()

    # -- the rule table ----------------------------------------------------

    def add(self, rule: RemapRule) -> None:
        """Install *rule*; it replaces the rule of the same (direction, SPI, field)."""
        if not isinstance(rule, RemapRule):
            raise RemapError(f"expected a RemapRule, got {type(rule).__name__}")
        self._rules[rule.key] = rule
        self._recompile(rule.direction, rule.spi)

    def get(self, direction: Direction, spi: int, field: Field) -> RemapRule | None:
        return self._rules.get((direction, spi, field))

    def remove(self, direction: Direction, spi: int, field: Field | None = None) -> int:
        """Remove the rule(s) of (*direction*, *spi*), one field or both; how many went."""
        fields = (field,) if field is not None else tuple(Field)
        removed = 0
        for each in fields:
            if self._rules.pop((direction, spi, each), None) is not None:
                removed += 1
        if removed:
            self._recompile(direction, spi)
        return removed

    def remove_spi(self, spi: int) -> int:
        """Remove every rule of *spi*, both directions (SA DELETE, draft §6.2.5)."""
        return sum(self.remove(direction, spi) for direction in Direction)

    def remove_owner(self, owner: str) -> int:
        """Remove every rule *owner* installed."""
        return self._remove_where(lambda rule: rule.owner == owner)

    def replace_address(self, old: IPv6Address, new: IPv6Address) -> int:
        """Movement (draft §6.1, docs/design.md §7.6): every rule naming *old* names *new*.

        Expected, remap and fallback addresses are all replaced; the wildcard
        and ``ancillary`` are not addresses and stay.  Returns how many rules
        changed.
        """
        old = _as_address(old, "old address")
        new = _as_address(new, "new address")
        if _UNSPECIFIED_ADDRESS in (old, new):
            raise RemapError("movement replaces a real address with another; :: is neither")
        if old == new:
            return 0
        changed = []
        for key, rule in self._rules.items():
            if not rule.names(old):
                continue
            expected = [new if a == old else a for a in rule.expected_addresses]
            # The set may name *new* already: once is enough.
            expected = [a for i, a in enumerate(expected) if a not in expected[:i]]
            updated = replace(
                rule,
                expected=expected[0],
                also_expected=tuple(expected[1:]),
                remap=new if rule.remap == old else rule.remap,
                fallback=new if rule.fallback == old else rule.fallback,
            )
            changed.append((key, updated))
        for key, updated in changed:
            self._rules[key] = updated
        for direction, spi in {(key[0], key[1]) for key, _ in changed}:
            self._recompile(direction, spi)
        return len(changed)

    def clear(self) -> int:
        return self._remove_where(lambda rule: True)

    def rules(self) -> list[RemapRule]:
        """Every rule, in installation order (a replaced rule keeps its place)."""
        return list(self._rules.values())

    def format_rules(self, *, with_owner: bool = False) -> list[str]:
        """Every rule in the draft's syntax (§5.2.2), one string each."""
        return [format_rule(rule, with_owner=with_owner) for rule in self._rules.values()]

    def __len__(self) -> int:
        return len(self._rules)

    def _remove_where(self, condition: Callable[[RemapRule], bool]) -> int:
        doomed = [key for key, rule in self._rules.items() if condition(rule)]
        for key in doomed:
            del self._rules[key]
        for direction, spi in {(key[0], key[1]) for key in doomed}:
            self._recompile(direction, spi)
        return len(doomed)

    def _recompile(self, direction: Direction, spi: int) -> None:
        table = self._out if direction is Direction.OUT else self._in
        src = self._rules.get((direction, spi, Field.SRC))
        dst = self._rules.get((direction, spi, Field.DST))
        if src is None and dst is None:
            table.pop(spi, None)
        else:
            table[spi] = (_compile(src), _compile(dst))

    # -- per packet ----------------------------------------------------------

    def _spi(self, packet: bytes | bytearray | memoryview) -> int:
        """SPI of the outermost ESP header; -1: no ESP; -2: not an IPv6 packet."""
        length = len(packet)
        if length < _IPV6_HEADER_LEN or packet[0] >> 4 != 6:
            return -2
        end = _IPV6_HEADER_LEN + (packet[4] << 8 | packet[5])
        if end > length:
            return -2  # truncated: the payload length promises more than there is
        if packet[6] == ESP:  # the common case: ESP right after the header
            if end < _IPV6_HEADER_LEN + _ESP_SPI_LEN:
                return -2
            return _SPI.unpack_from(packet, _IPV6_HEADER_LEN)[0]
        found = esp_spi(packet)  # walks extension headers (RFC 8200 §4)
        return -1 if found is None else found[0]

    def outbound(self, packet: bytes | bytearray | memoryview,
                 ancillary: bytes | IPv6Address | Ancillary | None = None) -> bytes | None:
        """Apply the outgoing rules of the packet's SPI (after ESP, draft §5.1.2).

        *ancillary*: what MIPv6 chose for this packet (§5.1.1): an
        :class:`Ancillary` (``src`` = our CoA, ``dst`` = the peer's CoA), or a
        bare address (16 bytes or ``IPv6Address``) for whichever field has an
        ``ancillary`` rule; when both fields have one, a bare address is
        ambiguous and the packet is dropped (``ancillary_ambiguous``).
        Non-ESP packets and SPIs without rules come back unchanged (the same
        object).  ``None``: dropped, with the reason counted.  Never raises.
        """
        spi = self._spi(packet)
        if spi < 0:
            if spi == -1:
                return packet  # type: ignore[return-value]
            self.counters["malformed"] += 1
            return None
        rules = self._out.get(spi)
        if rules is None:
            return packet  # type: ignore[return-value]
        src_rule, dst_rule = rules

        ancillary_src = ancillary_dst = None
        if ancillary is not None:
            if isinstance(ancillary, Ancillary):
                ancillary_src, ancillary_dst = ancillary
                if len(ancillary_src) != 16 or len(ancillary_dst) != 16:
                    self.counters["bad_ancillary"] += 1
                    return None
                if ancillary_src == UNSPECIFIED:
                    ancillary_src = None
                if ancillary_dst == UNSPECIFIED:
                    ancillary_dst = None
            else:
                if isinstance(ancillary, IPv6Address):
                    ancillary = ancillary.packed
                elif isinstance(ancillary, (bytearray, memoryview)):
                    ancillary = bytes(ancillary)
                if not isinstance(ancillary, bytes) or len(ancillary) != 16:
                    self.counters["bad_ancillary"] += 1
                    return None
                if ancillary != UNSPECIFIED:
                    src_wants = src_rule is not None and src_rule[1] is None
                    dst_wants = dst_rule is not None and dst_rule[1] is None
                    if src_wants and dst_wants:
                        # MN-MN: our CoA and the peer's cannot share one value.
                        self.counters["ancillary_ambiguous"] += 1
                        return None
                    if src_wants:
                        ancillary_src = ancillary
                    else:
                        ancillary_dst = ancillary

        new_src = new_dst = None
        if src_rule is not None:
            expected, target, fallback, _ = src_rule
            current = packet[8:24]
            if expected is None or expected == current:
                if target is None:
                    target = ancillary_src or fallback
                    if target is None:
                        self.counters["out_src_no_ancillary"] += 1
                        if self._drop_without_ancillary:
                            return None
                if target is not None and target != current:
                    new_src = target
            else:
                self.counters["out_src_mismatch"] += 1
        if dst_rule is not None:
            expected, target, fallback, _ = dst_rule
            current = packet[24:40]
            if expected is None or expected == current:
                if target is None:
                    # §3.1 rule 3: the destination is remapped "if not null".
                    target = ancillary_dst or fallback
                    if target is None:
                        self.counters["out_dst_no_ancillary"] += 1
                if target is not None and target != current:
                    new_dst = target
            else:
                self.counters["out_dst_mismatch"] += 1
        if new_src is None and new_dst is None:
            return packet  # type: ignore[return-value]
        self.counters["out_remapped"] += 1
        return b"".join((packet[:8], new_src or packet[8:24], new_dst or packet[24:40],
                         packet[40:]))

    def inbound(self, packet: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
        """Apply the incoming rules of the packet's SPI (before ESP, draft §5.1.2, §5.1.3).

        Returns the packet with SA-level addresses and one 16-byte ancillary
        address (§5.1.1): the on-wire source a rule marked ``(ancillary)``
        replaced (the CN learning the MN's CoA), else the on-wire destination
        such a rule replaced (the MN learning which of its CoAs the packet
        reached), else ``::``.  When both can happen at once (MN-MN over one
        SA pair), use :meth:`inbound_ancillary`.  ``None``: dropped (an
        expected-address mismatch, see the module notes), with the reason
        counted.  Never raises.
        """
        result = self._inbound(packet)
        if result is None:
            return None
        rewritten, src, dst = result
        return rewritten, (src if src != UNSPECIFIED else dst)

    def inbound_ancillary(self, packet: bytes | bytearray | memoryview
                          ) -> tuple[bytes, Ancillary] | None:
        """:meth:`inbound` with both on-wire addresses (``::`` where unchanged)."""
        result = self._inbound(packet)
        if result is None:
            return None
        rewritten, src, dst = result
        if src == UNSPECIFIED and dst == UNSPECIFIED:
            return rewritten, NOTHING_REMAPPED
        return rewritten, Ancillary(src, dst)

    def _inbound(self, packet: bytes | bytearray | memoryview
                 ) -> tuple[bytes, bytes, bytes] | None:
        spi = self._spi(packet)
        if spi < 0:
            if spi == -1:
                return packet, UNSPECIFIED, UNSPECIFIED  # type: ignore[return-value]
            self.counters["malformed"] += 1
            return None
        rules = self._in.get(spi)
        if rules is None:
            return packet, UNSPECIFIED, UNSPECIFIED  # type: ignore[return-value]
        src_rule, dst_rule = rules
        new_src = new_dst = None
        on_wire_src = on_wire_dst = UNSPECIFIED
        if src_rule is not None:
            expected, target, _, copy = src_rule
            current = packet[8:24]
            if current == target:
                self.counters["in_src_unchanged"] += 1
            elif expected is None or expected == current or (
                    type(expected) is tuple and current in expected):
                new_src = target
                if copy:
                    on_wire_src = bytes(current)
            else:
                self.counters["in_src_mismatch"] += 1
                return None
        if dst_rule is not None:
            expected, target, _, copy = dst_rule
            current = packet[24:40]
            if current == target:
                self.counters["in_dst_unchanged"] += 1
            elif expected is None or expected == current or (
                    type(expected) is tuple and current in expected):
                new_dst = target
                if copy:
                    on_wire_dst = bytes(current)
            else:
                self.counters["in_dst_mismatch"] += 1
                return None
        if new_src is None and new_dst is None:
            return packet, UNSPECIFIED, UNSPECIFIED  # type: ignore[return-value]
        self.counters["in_remapped"] += 1
        rewritten = b"".join((packet[:8], new_src or packet[8:24], new_dst or packet[24:40],
                              packet[40:]))
        return rewritten, on_wire_src, on_wire_dst


