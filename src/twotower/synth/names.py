"""Deterministic, human-readable names for the synthetic catalog: tags, people, makers, titles.

Names are built from small word lists by index, so a catalog of any size gets unique names without storing
them; past the number of combinations a counter is appended (``"Velvet Harbor 2"``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "GENERIC_TAGS",
    "SERIES_WORDS",
    "TAG_NAME_SPACE",
    "TITLE_WORDS",
    "director_name",
    "label_name",
    "maker_name",
    "performer_name",
    "series_name",
    "tag_name",
]

# tags shared by every taste: they carry no taste signal (the "noise" a real catalog has)
GENERIC_TAGS = (
    "HD", "4K", "New Release", "Best Seller", "Exclusive", "On Sale", "Subtitled", "Bonus Footage",
    "Limited Time", "Editor's Pick",
)  # fmt: skip

_TAG_FIRST = (
    "Velvet", "Neon", "Rustic", "Silent", "Golden", "Crimson", "Urban", "Coastal", "Midnight", "Retro",
    "Electric", "Gentle", "Wild", "Frozen", "Sunny", "Misty", "Royal", "Hidden", "Lunar", "Amber",
    "Cosmic", "Tropical", "Vintage", "Indigo", "Rapid", "Quiet", "Bold", "Candid", "Dreamy", "Fierce",
    "Lively", "Mellow", "Noble", "Playful", "Radiant", "Serene", "Smoky", "Tender", "Vivid", "Witty",
)  # fmt: skip
_TAG_SECOND = (
    "Harbor", "Garden", "Office", "Campus", "Studio", "Forest", "Kitchen", "Rooftop", "Library", "Festival",
    "Journey", "Cabin", "Arcade", "Beach", "Cafe", "Circus", "Desert", "Gallery", "Island", "Lagoon",
    "Market", "Meadow", "Mansion", "Orchard", "Palace", "Pier", "Resort", "Salon", "Stadium", "Subway",
    "Temple", "Theater", "Tower", "Valley", "Village", "Vineyard", "Workshop", "Harvest", "Canyon", "Alley",
)  # fmt: skip
TITLE_WORDS = (
    "Encounter", "Holiday", "Secrets", "Weekend", "Adventure", "Memories", "Promise", "Rhapsody", "Escape",
    "Lessons", "Reunion", "Diary", "Affair", "Getaway", "Moments", "Nights", "Story", "Challenge",
)  # fmt: skip
_GIVEN = (
    "Aoi", "Hana", "Yui", "Mio", "Rin", "Saki", "Mei", "Nana", "Riko", "Emi", "Kana", "Miku", "Ayame", "Sora",
    "Yuna", "Hikari", "Ren", "Kaede", "Natsu", "Akari", "Chika", "Erika", "Haruka", "Izumi", "Kiko", "Luna",
    "Mari", "Noa", "Rei", "Sayaka", "Tomo", "Umi", "Yoko", "Ami", "Fumi", "Hina", "Jun", "Koharu", "Momo",
    "Nao", "Asuka", "Kira", "Maya", "Rina", "Shiho", "Tsubasa", "Yuki", "Zen",
)  # fmt: skip
_FAMILY = (
    "Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi", "Kato",
    "Yoshida", "Yamada", "Sasaki", "Yamaguchi", "Matsumoto", "Inoue", "Kimura", "Hayashi", "Shimizu",
    "Yamazaki", "Mori", "Abe", "Ikeda", "Hashimoto", "Yamashita", "Ishikawa", "Nakajima", "Maeda", "Fujita",
    "Ogawa", "Goto", "Okada", "Hasegawa", "Murakami", "Kondo", "Ishii", "Saito", "Sakamoto", "Endo", "Aoki",
    "Fujii", "Nishimura", "Fukuda", "Ota", "Miura", "Fujiwara", "Okamoto", "Matsuda",
)  # fmt: skip
_MAKER_FIRST = (
    "Prism", "Blue Moon", "Red Lantern", "Silverline", "Starlight", "Peach", "Orbit", "Maple", "Lotus",
    "Aurora", "Cherry", "Nova", "Pulse", "Sakura", "Echo", "Zenith", "Comet", "Horizon", "Iris", "Jade",
)  # fmt: skip
_MAKER_SECOND = ("Pictures", "Studios", "Films", "Media", "Works", "Entertainment", "Visual", "Productions")
_LABEL_WORDS = ("Premium", "Select", "Classic", "Next", "Prime", "Indie")
SERIES_WORDS = ("Collection", "Diaries", "Chronicles", "Sessions", "Stories", "Files", "Tales", "Journal")


TAG_NAME_SPACE = len(_TAG_FIRST) * len(_TAG_SECOND)  # tag names before a counter is appended


def _combo(i: int, first: Sequence[str], second: Sequence[str]) -> str:
    """The ``i``-th unique ``first second`` pair, walking ``first`` fastest."""
    n = len(first) * len(second)
    base = f"{first[i % len(first)]} {second[(i // len(first)) % len(second)]}"
    return base if i < n else f"{base} {i // n + 1}"


def tag_name(i: int) -> str:
    return _combo(i, _TAG_FIRST, _TAG_SECOND)


def performer_name(i: int) -> str:
    return _combo(i, _GIVEN, _FAMILY)


def director_name(i: int) -> str:
    # family name first, and walked in another order, so directors rarely share a performer's name
    return _combo(i, _FAMILY[::-1], _GIVEN[::-1])


def maker_name(i: int) -> str:
    return _combo(i, _MAKER_FIRST, _MAKER_SECOND)


def label_name(maker: str, j: int) -> str:
    return f"{maker} {_LABEL_WORDS[j % len(_LABEL_WORDS)]}"


def series_name(maker: str, j: int) -> str:
    return f"{maker} {SERIES_WORDS[j % len(SERIES_WORDS)]}"
