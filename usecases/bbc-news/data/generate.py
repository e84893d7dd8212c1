"""Generate an offline news corpus laid out like the raw BBC archive, deterministic by seed.

    python usecases/bbc-news/data/generate.py --out DIR --per-class 100 --seed 42

Writes `DIR/<category>/NNN.txt` for business, entertainment, politics, sport and tech (a title
line, a blank line, then paragraphs, like the BBC files) plus `DIR/README.TXT`. Articles are built
from sentence templates whose slots draw words from the article's own topic, from a second topic
and from general news language. Topics share some words ("market", "game", "music", "minister")
and a few articles mix two topics almost evenly, so a good bag-of-words model scores high but not
perfectly.

Unless `--no-invalid`, three files give the DataPipeline's validate and clean steps work, as in
the real archive: a too-short article (`business/<N+1>.txt`), an article encoded in Latin-1 rather
than UTF-8 (one of sport's, with a pound sign; cleaning repairs it) and a non-text file
(`tech/<N+1>.html`).

Standard library only, so it runs anywhere a pipeline step runs.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = ("business", "entertainment", "politics", "sport", "tech")


@dataclass(frozen=True)
class Topic:
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]  # base forms; inflected by _inflect
    adjectives: tuple[str, ...]
    orgs: tuple[str, ...]
    roles: tuple[str, ...]


def _t(text: str) -> tuple[str, ...]:
    return tuple(text.split())


TOPICS: dict[str, Topic] = {
    "business": Topic(
        nouns=_t(
            "shares profits market economy bank investors firm company sales growth inflation "
            "dollar euro oil prices deal takeover merger bid stake earnings revenue debt loan "
            "interest rates exports imports trade deficit tax retailer shareholders dividend "
            "quarter analysts stock exchange index currency budget spending consumer demand "
            "factory jobs unemployment airline carmaker brewer insurer pension fund bonds "
            "output recession forecast chief executive board"
        ),
        verbs=_t("rise fall buy sell invest borrow lend merge report forecast cut raise boost slow trade grow"),
        adjectives=_t(
            "quarterly annual financial economic fiscal strong weak volatile profitable corporate "
            "global domestic stock-market retail wholesale"
        ),
        orgs=_t(
            "Deutsche-Bank Yukos Gazprom WorldCom Enron Parmalat Boeing Airbus Sainsbury Tesco "
            "Federal-Reserve Bank-of-England OPEC IMF Lufthansa"
        ),
        roles=_t("chief-executive finance-director chairman economist analyst trader"),
    ),
    "entertainment": Topic(
        nouns=_t(
            "film movie actor actress director star award oscar oscars album singer band music "
            "chart single concert festival show series drama comedy theatre stage audience "
            "box-office premiere soundtrack song songs role performance nomination nominations "
            "ceremony studio hollywood celebrity tour fans record label producer musical novel "
            "author screen cinema documentary sequel"
        ),
        verbs=_t("star direct perform release sing nominate premiere tour record win film play"),
        adjectives=_t(
            "musical cinematic critically-acclaimed best-selling animated live classic comic "
            "romantic hit award-winning"
        ),
        orgs=_t("BAFTA Universal Paramount Miramax EMI Sony-Music Warner-Bros Brit-Awards Grammys Channel-4"),
        roles=_t("director producer singer actor actress critic presenter songwriter"),
    ),
    "politics": Topic(
        nouns=_t(
            "government minister ministers election labour tories conservatives liberal "
            "democrats party parliament mps vote voters campaign policy bill law commons lords "
            "chancellor prime-minister leader opposition manifesto referendum constituency "
            "immigration asylum council secretary reform inquiry peers cabinet home-office "
            "spokesman debate poll polls mandate legislation whitehall"
        ),
        verbs=_t("vote elect campaign legislate debate oppose propose reform govern resign announce pledge"),
        adjectives=_t("political parliamentary electoral conservative liberal democratic public general constitutional"),
        orgs=_t("Labour Tories Liberal-Democrats UKIP Downing-Street Westminster House-of-Commons Home-Office Treasury"),
        roles=_t("minister secretary MP spokesman peer leader chancellor candidate"),
    ),
    "sport": Topic(
        nouns=_t(
            "match game team coach player players season league cup championship final goal "
            "goals striker midfielder defender keeper tournament injury squad victory defeat "
            "win title race athlete olympic medal tennis rugby football cricket stadium fans "
            "manager club clubs referee penalty try tries wicket seed round set sets trophy "
            "record sprint marathon"
        ),
        verbs=_t("win lose score beat defeat coach play train qualify draw tackle sprint"),
        adjectives=_t("sporting competitive unbeaten injured international olympic domestic athletic home away"),
        orgs=_t("Arsenal Chelsea Manchester-United Liverpool England Wales Ireland FIFA UEFA Wimbledon IAAF"),
        roles=_t("coach manager captain striker winger chairman referee"),
    ),
    "tech": Topic(
        nouns=_t(
            "software computer computers internet web broadband mobile phone phones users "
            "technology network networks data digital online service services game games "
            "console virus spam security hackers website search-engine device devices "
            "gadget gadgets chip processor music download downloads file-sharing wireless "
            "screen programs program microsoft apple google sony developers browser email "
            "blog blogs"
        ),
        verbs=_t("download launch develop install connect upgrade hack browse stream program search share"),
        adjectives=_t("digital online wireless mobile technological portable virtual electronic high-speed open-source"),
        orgs=_t("Microsoft Apple Google Sony Nokia Intel IBM Yahoo eBay Vodafone Nintendo"),
        roles=_t("developer analyst researcher engineer spokesman executive"),
    ),
}

GENERAL_NOUNS = _t(
    "year years week month people country world time plans report news statement figures group "
    "change number part way future week-end move decision problem issue question case industry "
    "market government minister game music record deal leader director family children city town "
    "area region community school hospital police court judge evidence study research survey "
    "idea effort chance level rate cost price money value system project scheme programme plan "
    "support pressure interest attention success failure risk fear hope claim view opinion "
    "interview comment reason example point result effect impact role position situation history "
    "tradition experience member members official officials agency authority spokeswoman "
    "organisation partner partners rival rivals weekend morning evening night day days hours "
    "minutes side sides end start beginning rest half majority minority total amount size"
)
GENERAL_VERBS = _t(
    "say expect warn believe suggest hope claim add show plan face seek need make take tell ask "
    "want try give look call find keep hold bring begin remain continue consider decide agree "
    "argue explain describe insist admit deny confirm reveal welcome reject urge allow help"
)
GENERAL_ADJECTIVES = _t(
    "new big major last next first latest recent important difficult key top early late large "
    "small long short high low clear serious similar different possible likely certain current "
    "former national local british european american international private public senior "
    "significant huge tough real main"
)
FIRST_NAMES = _t(
    "John David Michael Sarah Emma James Peter Paul Mark Helen Claire Tony Gordon Andrew Richard "
    "Robert Susan Anne Thomas Simon Jonathan Kate Charles"
)
LAST_NAMES = _t(
    "Smith Jones Brown Taylor Wilson Evans Thomas Johnson Roberts Walker Wright Robinson Thompson "
    "White Hughes Edwards Green Hall Wood Harris Lewis Martin Jackson Clarke"
)
FEELINGS = _t("confident concerned optimistic disappointed pleased worried delighted cautious")
PERIODS = _t("January February March April May June July August September October November December")
TEMPLATES = (
    "{Org} said the {adj} {noun} would {verb} {noun2} in the coming months.",
    "The {noun} {verbed} by {num}% in {period}, according to {org}.",
    '"We are {feeling} about the {noun} and we will {verb} the {noun2}," said {person}, {role} of {org}.',
    "{Person} told the BBC that the {noun} was {adj} and that {noun2} {verbs} too.",
    "Last {period} {org} {verbed} its {noun} after the {adj} {noun2}.",
    "There have been concerns that the {gadj} {noun} could {verb} the {noun2}.",
    "Many {noun} {gverb} the {adj} {noun2} will {verb} {gadj} {noun3}.",
    "The {role} {gverbed} that {noun} and {noun2} {verbed} {num} times this {gnoun}.",
    "{Org} is expected to {verb} the {noun} later this {gnoun}.",
    "It is the {gadj} {noun} since {org} {verbed} the {noun2} in {year}.",
    "Critics {gverb} the {noun} {verbs} {gadj} questions about {noun2} and {noun3}.",
    "Figures {gverbed} the {adj} {noun} {verbed}, while {noun2} {gverbed} {gadj}.",
)


IRREGULAR_PAST = {
    "win": "won", "sell": "sold", "buy": "bought", "lose": "lost", "beat": "beat", "sing": "sang",
    "say": "said", "take": "took", "make": "made", "seek": "sought", "lend": "lent", "fall": "fell",
    "rise": "rose", "grow": "grew", "cut": "cut", "draw": "drew", "face": "faced", "show": "showed",
    "hope": "hoped", "add": "added", "plan": "planned", "stream": "streamed", "film": "filmed",
}


def _inflect(verb: str, form: str) -> str:
    """English inflections; Porter stemming folds the regular ones back together."""
    if form == "s":
        return verb + ("es" if verb.endswith(("s", "sh", "ch", "x")) else "s")
    if form == "ed":
        if verb in IRREGULAR_PAST:
            return IRREGULAR_PAST[verb]
        if verb.endswith("e"):
            return verb + "d"
        if len(verb) <= 4 and verb[-1] not in "aeiouwy" and verb[-2] in "aeiou" and verb[-3] not in "aeiou":
            return verb + verb[-1] + "ed"
        return verb + "ed"
    return verb


def _word(name: str) -> str:
    return name.replace("-", " ")


class ArticleWriter:
    """Writes one article as a mixture of a primary topic, a secondary topic and general language."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _topic(self, mix: list[tuple[str, float]]) -> Topic | None:
        r = self.rng.random()
        for name, weight in mix:
            if r < weight:
                return TOPICS[name]
            r -= weight
        return None  # general language

    def _slot(self, kind: str, mix: list[tuple[str, float]]) -> str:
        rng = self.rng
        topic = self._topic(mix)
        if kind == "noun":
            return _word(rng.choice(topic.nouns if topic else GENERAL_NOUNS))
        if kind == "adj":
            return _word(rng.choice(topic.adjectives if topic else GENERAL_ADJECTIVES))
        if kind in ("verb", "verbs", "verbed"):
            verb = rng.choice(topic.verbs if topic else GENERAL_VERBS)
            return _inflect(verb, {"verb": "", "verbs": "s", "verbed": "ed"}[kind])
        if kind == "org":
            return _word(rng.choice(topic.orgs)) if topic else f"the {_word(rng.choice(GENERAL_NOUNS))} group"
        if kind == "role":
            return _word(rng.choice(topic.roles)) if topic else "spokesman"
        raise ValueError(kind)

    def sentence(self, mix: list[tuple[str, float]]) -> str:
        rng = self.rng
        template = rng.choice(TEMPLATES)
        values = {
            "noun": self._slot("noun", mix),
            "noun2": self._slot("noun", mix),
            "noun3": self._slot("noun", mix),
            "adj": self._slot("adj", mix),
            "verb": self._slot("verb", mix),
            "verbs": self._slot("verbs", mix),
            "verbed": self._slot("verbed", mix),
            "org": self._slot("org", mix),
            "role": self._slot("role", mix),
            "person": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "gnoun": rng.choice(GENERAL_NOUNS).replace("-", ""),
            "gverb": rng.choice(GENERAL_VERBS),
            "gverbed": _inflect(rng.choice(GENERAL_VERBS), "ed"),
            "gadj": rng.choice(GENERAL_ADJECTIVES),
            "feeling": rng.choice(FEELINGS),
            "num": str(rng.randint(2, 95)),
            "period": rng.choice(PERIODS),
            "year": str(rng.randint(1990, 2004)),
        }
        values["Org"] = values["org"][:1].upper() + values["org"][1:]
        values["Person"] = values["person"]
        text = template.format(**values)
        return text[:1].upper() + text[1:]

    def article(self, category: str, pound: bool = False) -> str:
        rng = self.rng
        others = [c for c in CATEGORIES if c != category]
        second = rng.choice(others)
        primary = rng.uniform(0.25, 0.6)
        if rng.random() < 0.06:  # a story that straddles two topics almost evenly
            secondary = primary * rng.uniform(0.75, 1.25)
        else:
            secondary = primary * rng.uniform(0.0, 0.45)
        mix = [(category, primary), (second, secondary)]
        n_par = rng.randint(3, 9)
        paragraphs = [" ".join(self.sentence(mix) for _ in range(rng.randint(1, 4))) for _ in range(n_par)]
        if pound:
            paragraphs.insert(1, f"The deal is worth \u00a3{rng.randint(2, 90)}.{rng.randint(1, 9)}m, the caf\u00e9 owner said.")
        title = f"{self._slot('adj', mix)} {self._slot('noun', mix)} {self._slot('verbs', mix)} {self._slot('noun', mix)}"
        title = title[:1].upper() + title[1:]
        return title + "\n\n" + "\n\n".join(paragraphs) + "\n"


README = """Generated offline news corpus in the layout of the BBC raw archive ({n} documents).
Natural Classes: 5 (business, entertainment, politics, sport, tech)
Written by usecases/bbc-news/data/generate.py --per-class {per_class} --seed {seed}; not BBC content.
"""


def generate(out: Path, per_class: int, seed: int, invalid: bool = True, readme: bool = True) -> dict[str, int]:
    """Write the corpus; returns the number of valid articles per category."""
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    rng = random.Random(seed)
    writer = ArticleWriter(rng)
    latin1_at = rng.randint(1, per_class) if invalid else -1
    counts: dict[str, int] = {}
    for category in CATEGORIES:
        folder = out / category
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            latin1 = category == "sport" and i == latin1_at
            text = writer.article(category, pound=latin1)
            (folder / f"{i:03d}.txt").write_bytes(text.encode("latin-1" if latin1 else "utf-8"))
        counts[category] = per_class
    if invalid:
        (out / "business" / f"{per_class + 1:03d}.txt").write_text("Shares up.\n", encoding="utf-8")
        html = "<html><body><p>" + writer.article("tech").replace("\n\n", "</p><p>") + "</p></body></html>\n"
        (out / "tech" / f"{per_class + 1:03d}.html").write_text(html, encoding="utf-8")
    if readme:
        (out / "README.TXT").write_text(README.format(n=per_class * len(CATEGORIES), per_class=per_class, seed=seed))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--per-class", type=int, default=100, help="valid articles per category")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-invalid", action="store_true", help="leave out the three invalid files")
    parser.add_argument("--no-readme", action="store_true", help="leave out README.TXT at the top")
    args = parser.parse_args(argv)
    counts = generate(args.out, args.per_class, args.seed, invalid=not args.no_invalid, readme=not args.no_readme)
    print(f"wrote {sum(counts.values())} articles in {len(counts)} categories to {args.out}")


if __name__ == "__main__":
    main()
