"""The FoundIR degradation taxonomy: 20 types (7 isolated, 13 coupled) as data.

The names, test folders and id ranges come from the public release (see
docs/release.md, "Data" and Table 1 of the paper). ``NightRain`` is the
release's single token for lowlight + rain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping
from foundir_data.errors import FoundIRError

#: Degradation components, in the order used for flags and canonical names.
COMPONENTS: tuple[str, ...] = ("blur", "noise", "jpeg", "haze", "rain", "raindrop", "lowlight")


@dataclass(frozen=True)
class DegradationType:
    """One of the 20 FoundIR degradation types.

    Attributes:
        name: Canonical name, as in the release's test folders without the number
            (``Blur_Noise``, ``NightRain``). Dot-free, usable as a config name.
        index: 0-based position in the release order (folder ``NN`` minus one); the
            ClassLabel id used by readers.
        components: The component degradations (subset of :data:`COMPONENTS`).
        folder: The release's test folder name (``02Blur_Noise``).
        test_ids: Inclusive id range of the release's test set for this type.
        short: The abbreviation used in the paper's Table 1 (``B+N``).
    """

    name: str
    index: int
    components: frozenset[str]
    folder: str
    test_ids: tuple[int, int]
    short: str

    @property
    def cls(self) -> str:
        """``"isolated"`` for a single component, else ``"coupled"``."""
        return "isolated" if len(self.components) == 1 else "coupled"

    @property
    def is_isolated(self) -> bool:
        return len(self.components) == 1

    def flags(self) -> dict[str, bool]:
        """Component flags, e.g. ``{"blur": True, "noise": False, ...}``."""
        return {c: c in self.components for c in COMPONENTS}


def _t(index: int, name: str, comps: str, ids: tuple[int, int], short: str) -> DegradationType:
    return DegradationType(
        name=name,
        index=index,
        components=frozenset(comps.split()),
        folder=f"{index + 1:02d}{name}",
        test_ids=ids,
        short=short,
    )


# Release order (docs/release.md, "Data"). Short names follow Table 1 of the paper
# (B, N, J, R, H, L); Raindrop has no letter there, so it keeps its name.
TYPES: tuple[DegradationType, ...] = (
    _t(0, "Blur", "blur", (1, 150), "Blur"),
    _t(1, "Blur_Noise", "blur noise", (151, 200), "B+N"),
    _t(2, "Blur_JPEG", "blur jpeg", (201, 250), "B+J"),
    _t(3, "Blur_Noise_JPEG", "blur noise jpeg", (251, 300), "B+N+J"),
    _t(4, "Noise", "noise", (301, 400), "Noise"),
    _t(5, "JPEG", "jpeg", (401, 450), "JPEG"),
    _t(6, "Noise_JPEG", "noise jpeg", (451, 500), "N+J"),
    _t(7, "Haze", "haze", (501, 700), "Haze"),
    _t(8, "Lowlight_Haze", "lowlight haze", (701, 800), "L+H"),
    _t(9, "Rain", "rain", (801, 900), "Rain"),
    _t(10, "Raindrop", "raindrop", (901, 1000), "Raindrop"),
    _t(11, "NightRain", "lowlight rain", (1001, 1050), "L+R"),
    _t(12, "Rain_Haze", "rain haze", (1051, 1100), "R+H"),
    _t(13, "Lowlight", "lowlight", (1101, 1150), "Lowlight"),
    _t(14, "Lowlight_Blur", "lowlight blur", (1151, 1250), "L+B"),
    _t(15, "Lowlight_Noise", "lowlight noise", (1251, 1300), "L+N"),
    _t(16, "Lowlight_JPEG", "lowlight jpeg", (1301, 1350), "L+J"),
    _t(17, "Lowlight_Blur_Noise", "lowlight blur noise", (1351, 1400), "L+B+N"),
    _t(18, "Lowlight_Blur_JPEG", "lowlight blur jpeg", (1401, 1450), "L+B+J"),
    _t(19, "Lowlight_Noise_JPEG", "lowlight noise jpeg", (1451, 1500), "L+N+J"),
)

NAMES: tuple[str, ...] = tuple(t.name for t in TYPES)
ISOLATED: tuple[str, ...] = tuple(t.name for t in TYPES if t.is_isolated)
COUPLED: tuple[str, ...] = tuple(t.name for t in TYPES if not t.is_isolated)
_BY_NAME: dict[str, DegradationType] = {t.name: t for t in TYPES}
_BY_COMPONENTS: dict[frozenset[str], DegradationType] = {t.components: t for t in TYPES}

# Token spellings seen in the release (folder names, list-file paths) -> components.
_TOKEN_COMPONENTS: dict[str, tuple[str, ...]] = {
    "blur": ("blur",),
    "noise": ("noise",),
    "jpeg": ("jpeg",),
    "jpg": ("jpeg",),
    "haze": ("haze",),
    "rain": ("rain",),
    "raindrop": ("raindrop",),
    "lowlight": ("lowlight",),
    "lowlit": ("lowlight",),
    "nightrain": ("lowlight", "rain"),
}

_FOLDER_RE = re.compile(r"^(?:\d+)?(?P<body>[A-Za-z][A-Za-z_\-]*)$")


class UnknownDegradationError(FoundIRError, ValueError):
    """A degradation token that the taxonomy does not know and the user did not map."""


def get(name: str) -> DegradationType:
    """Return the type with canonical ``name`` (case-insensitive).

    Raises:
        UnknownDegradationError: with the list of valid names.
    """
    t = _BY_NAME.get(name) or {k.lower(): v for k, v in _BY_NAME.items()}.get(name.lower())
    if t is None:
        raise UnknownDegradationError(
            f"unknown degradation type {name!r}; valid names: {', '.join(NAMES)}"
        )
    return t


def parse_token(token: str, mapping: Mapping[str, str] | None = None) -> DegradationType:
    """Parse a release folder token such as ``01Blur``, ``12NightRain`` or
    ``18Lowlight_Blur_Noise`` (also ``blur+noise``, ``Blur-Noise``) into its type.

    Args:
        token: The folder name or degradation spelling.
        mapping: Optional user mapping from unknown tokens to canonical names
            (``{"Motion": "Blur"}``), consulted first with the token as given and
            with its leading number stripped.

    Raises:
        UnknownDegradationError: naming the token and what would fix it.
    """
    raw = token.strip()
    m = _FOLDER_RE.match(raw.replace("+", "_"))
    body = m.group("body") if m else raw
    if mapping:
        for k in (raw, body):
            if k in mapping:
                return get(mapping[k])
    if body in _BY_NAME:
        return _BY_NAME[body]
    parts = [p for p in re.split(r"[_\-\s]+", body.lower()) if p]
    comps: set[str] = set()
    for p in parts:
        if p not in _TOKEN_COMPONENTS:
            raise UnknownDegradationError(
                f"unknown degradation token {token!r} (part {p!r}); known parts: "
                f"{', '.join(sorted(_TOKEN_COMPONENTS))}. Map it with --map {body}=<type> "
                f"where <type> is one of: {', '.join(NAMES)}"
            )
        comps.update(_TOKEN_COMPONENTS[p])
    t = _BY_COMPONENTS.get(frozenset(comps))
    if t is None:
        raise UnknownDegradationError(
            f"degradation token {token!r} combines {sorted(comps)}, which is not one of the "
            f"20 FoundIR types; map it with --map {body}=<type>"
        )
    return t


def from_test_id(test_id: int) -> DegradationType:
    """Return the type of a release test id (``1``..``1500``)."""
    for t in TYPES:
        if t.test_ids[0] <= test_id <= t.test_ids[1]:
            return t
    raise UnknownDegradationError(f"test id {test_id} is outside the release's 1..1500")


def select(names: str | list[str] | tuple[str, ...]) -> list[DegradationType]:
    """Resolve a config-style selector to types.

    Accepts ``"all"``, ``"isolated"``, ``"coupled"``, a canonical name, or a list of them.
    """
    if isinstance(names, str):
        names = [names]
    out: list[DegradationType] = []
    for n in names:
        key = n.lower()
        if key == "all":
            out.extend(TYPES)
        elif key == "isolated":
            out.extend(t for t in TYPES if t.is_isolated)
        elif key == "coupled":
            out.extend(t for t in TYPES if not t.is_isolated)
        else:
            out.append(get(n))
    seen: set[str] = set()
    return [t for t in out if not (t.name in seen or seen.add(t.name))]
