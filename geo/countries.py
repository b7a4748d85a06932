"""Country codes and the built-in country groups of POLICY.md.

``ISO_ALPHA2`` is the set of officially assigned ISO 3166-1 alpha-2 codes. ``EU`` and ``EEA`` are
the built-in groups (``EU``: the 27 member states; ``EEA``: the EU plus Iceland, Liechtenstein and
Norway). The register may name a group wherever it names a country; ``global`` (the provider
documents unpinned routing) and ``unknown`` (nothing documented) stand alone.
"""

from __future__ import annotations

ISO_ALPHA2: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET
    FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
    HK HM HN HR HT HU
    ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP
    KE KG KH KI KM KN KP KR KW KY KZ
    LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ
    OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA
    RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ
    UA UG UM US UY UZ
    VA VC VE VG VI VN VU
    WF WS
    YE YT
    ZA ZM ZW
    """.split()  # noqa: SIM905  # reads as the ISO table does
)

EU: frozenset[str] = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()  # noqa: SIM905
)
EEA: frozenset[str] = EU | {"IS", "LI", "NO"}

GROUPS: dict[str, frozenset[str]] = {"EU": EU, "EEA": EEA}
"""Built-in country groups, by name."""

GLOBAL = "global"
"""The provider documents that processing is not pinned to any geography."""
UNKNOWN = "unknown"
"""Nothing is documented (or what is known is unconfirmed)."""


def is_location(code: str) -> bool:
    """True for an ISO 3166-1 alpha-2 code or a built-in group name."""
    return code in ISO_ALPHA2 or code in GROUPS


def is_concrete(locations: tuple[str, ...]) -> bool:
    """True when ``locations`` names at least one country or group (not ``global``/``unknown``)."""
    return any(is_location(code) for code in locations)
