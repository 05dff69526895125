"""Statements about drug-delivery devices read from clinical text with the pack's medspaCy pipeline.

Each device mention in a text becomes a :class:`DeviceStatement`: what the object is (form, a drug
or cement that describes it, metal, manual preparation or manufacture, tier, bone, side), what was
done to it (removed, exchanged, inserted, left in place, not found), when (this session, history,
plan) and how surely (affirmed, negated, hypothetical, possible). A drug word describes a device
only inside the device's own noun phrase (``boundaries`` in ``cards/clinical-text.yaml`` end it);
a later bare mention of the same form ("the rod") inherits what an earlier mention said of it.

Pure: spaCy runs in process; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cds_service.rulepack.clinical_text import TARGET_GROUP

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Span

    from cds_service.rulepack.clinical_text import ClinicalTextFile, TextLexicon

QUOTE_LIMIT = 100
# A text is read up to this many characters (an operative note is a few thousand): the cost of
# reading stays bounded whatever a client sends, and spaCy refuses texts over a million.
TEXT_LIMIT = 100_000
REMOVAL_ACTIONS = frozenset({"remove", "exchange"})
INSERTION_ACTIONS = frozenset({"insert", "exchange"})
# The tier a device's form implies when nothing in its sentence names the site (facts file §1.2:
# nails and rods are intramedullary, spacers intra-articular; beads are placed in either).
FORM_TIERS = {"rod": "intramedullary", "nail": "intramedullary", "spacer": "intra-articular"}


@dataclass(frozen=True)
class DeviceStatement:
    """One statement about one device in one text."""

    source: str  # the resource it was read from, e.g. "DocumentReference/op-1"
    quote: str  # the supporting phrase, at most QUOTE_LIMIT characters
    form: str  # rod, nail, beads, spacer
    action: str | None = None  # remove, exchange, insert, leave, not-found
    time: str = "session"  # session, history, plan
    certainty: str = "affirmed"  # affirmed, negated, hypothetical, possible
    drug: bool = False  # a drug or a cement carrier describes the device
    metal: bool = False
    preparation: str | None = None  # manual, manufactured
    tier: str | None = None  # intramedullary, intra-articular, soft-tissue, other
    bone: str | None = None
    side: str | None = None

    @property
    def drug_device(self) -> bool:
        """A drug-delivery device (a drug or cement describes it, and it is not metal hardware)."""
        return self.drug and not self.metal

    @property
    def qualifies(self) -> bool:
        """A device 20703 covers: an intramedullary drug device not stated to be manufactured."""
        return (
            self.drug_device
            and self.tier == "intramedullary"
            and self.preparation != "manufactured"
        )

    @property
    def performed(self) -> bool:
        """The action is affirmed and happened in this session."""
        return self.certainty == "affirmed" and self.time == "session"

    @property
    def removal(self) -> bool:
        return self.performed and self.action in REMOVAL_ACTIONS

    @property
    def insertion(self) -> bool:
        return self.performed and self.action in INSERTION_ACTIONS


@dataclass(frozen=True)
class TextReading:
    """What one text says: its device statements, every phrase it marks (label and value), and
    the note sections it has."""

    statements: tuple[DeviceStatement, ...]
    labels: frozenset[tuple[str, str]] = frozenset()
    sections: frozenset[str] = frozenset()
    sentences: tuple[frozenset[str], ...] = ()  # the labels each sentence marks

    def says(self, label: str) -> bool:
        return any(name == label for name, _ in self.labels)

    def says_together(self, *labels: str) -> bool:
        """One sentence marks every one of ``labels`` ("the rod was drawn out with a hook")."""
        return any(set(labels) <= sentence for sentence in self.sentences)


def read_text(nlp: Language, rules: ClinicalTextFile, text: str, source: str) -> TextReading:
    """Read ``text`` (from the resource ``source``, its first TEXT_LIMIT characters) into device
    statements."""
    doc = nlp(text[:TEXT_LIMIT])
    marked = _device_phrases(doc)
    lexicon = rules.lexicon
    statements: list[DeviceStatement] = []
    earlier: dict[str, DeviceStatement] = {}
    sentences: list[frozenset[str]] = []
    for sentence in doc.sents:
        entities = [ent for ent in marked if sentence.start <= ent.start < sentence.end]
        sentences.append(frozenset(ent.label_ for ent in entities))
        for statement in _sentence_statements(doc, sentence, entities, source, lexicon):
            statement = _inherit(statement, earlier.get(statement.form))
            if statement.drug or statement.metal:
                earlier[statement.form] = statement
            statements.append(statement)
    sections = frozenset(
        category
        for span in getattr(doc._, "sections", [])
        if (category := span.category) is not None
    )
    labels = frozenset((ent.label_, _value(ent)) for ent in marked)
    return TextReading(tuple(statements), labels, sections, tuple(sentences))


def _device_phrases(doc: Doc) -> tuple[Span, ...]:
    """The marked phrases, less a manufacture word that describes the cement rather than the
    device ("hand-made from commercially available gentamicin-premixed cement")."""
    ents = sorted(doc.spans.get(TARGET_GROUP, []), key=lambda span: span.start)
    cements = [ent.start for ent in ents if ent.label_ == "CARRIER"]
    return tuple(
        ent
        for ent in ents
        if ent.label_ != "MANUFACTURED"
        or not any(ent.end <= start <= ent.end + 3 for start in cements)
    )


def _sentence_statements(
    doc: Doc, sentence: Span, entities: list[Span], source: str, lexicon: TextLexicon
) -> list[DeviceStatement]:
    anchors = [ent for ent in entities if ent.label_ == "DEVICE"]
    if not anchors:  # cement alone may be an arthroplasty's cement mantle: not a device
        return []
    actions = [ent for ent in entities if ent.label_ == "ACTION"]
    said = " ".join(sentence.text.split())
    statements: list[DeviceStatement] = []
    attached: dict[int, list[Span]] = {id(anchor): [] for anchor in anchors}
    for action in actions:
        attached[id(_nearest(action, anchors))].append(action)
    for anchor in anchors:
        segment = _segment(doc, sentence, anchor, lexicon.boundaries, entities)
        mention = _describe(anchor, segment, entities, sentence, said, source, lexicon)
        own = attached[id(anchor)] or ([_nearest(anchor, actions)] if actions else [])
        if not own:
            statements.append(mention)
        for action in own:
            statements.append(_with_action(mention, anchor, action, lexicon.times, sentence, said))
    return statements


def _nearest(target: Span, candidates: Sequence[Span]) -> Span:
    """The candidate closest to ``target`` in tokens (the later one on a tie)."""
    return min(candidates, key=lambda span: (_distance(target, span), -span.start))


def _distance(first: Span, second: Span) -> int:
    if first.end <= second.start:
        return second.start - first.end
    if second.end <= first.start:
        return first.start - second.end
    return 0


def _segment(
    doc: Doc, sentence: Span, anchor: Span, boundaries: frozenset[str], entities: Sequence[Span]
) -> tuple[int, int]:
    """The device's noun phrase: out from the anchor until punctuation, an action or a boundary."""
    action_tokens = {
        index for ent in entities if ent.label_ == "ACTION" for index in range(ent.start, ent.end)
    }

    def stops(index: int) -> bool:
        token = doc[index]
        joiner = token.text in ("-", "/")  # "antibiotic-coated", "vancomycin/tobramycin"
        return (
            (token.is_punct and not joiner) or index in action_tokens or token.lower_ in boundaries
        )

    start = anchor.start
    while start > sentence.start and not stops(start - 1):
        start -= 1
    end = anchor.end
    while end < sentence.end and not stops(end):
        end += 1
    return start, end


def _describe(
    anchor: Span,
    segment: tuple[int, int],
    entities: Sequence[Span],
    sentence: Span,
    said: str,
    source: str,
    lexicon: TextLexicon,
) -> DeviceStatement:
    inside = [ent for ent in entities if segment[0] <= ent.start and ent.end <= segment[1]]
    labels = {(ent.label_, _value(ent)) for ent in inside}
    whole = {(ent.label_, _value(ent)) for ent in entities}
    preparation = None
    if any(label == "MANUAL" for label, _ in whole):
        preparation = "manual"
    if any(label == "MANUFACTURED" for label, _ in whole):
        preparation = "manufactured"  # a record that says both does not support the code
    form = _value(anchor)
    bone = _nearest_value(anchor, inside, entities, "BONE") or _word_in_site(
        anchor, inside, entities, lexicon.bones
    )
    site = _nearest_value(anchor, inside, entities, "SITE")
    # A rod or nail in a named bone is in its canal; beads name no tier of their own.
    implied = FORM_TIERS.get(form) if bone is not None or form == "spacer" else None
    tier = site or implied
    return DeviceStatement(
        source=source,
        quote=_quote(sentence, said, anchor.start, anchor.end),
        form=form,
        drug=any(label in ("DRUG", "CARRIER") for label, _ in labels),
        metal=any(label == "METAL" for label, _ in labels),
        preparation=preparation,
        tier=tier,
        bone=bone,
        side=_nearest_value(anchor, inside, entities, "SIDE")
        or _word_in_site(anchor, inside, entities, lexicon.sides),
    )


def _word_in_site(
    anchor: Span, inside: Sequence[Span], entities: Sequence[Span], words: Mapping[str, str]
) -> str | None:
    """The bone or side a site phrase names inside itself ("tibial canal", "canal of the left
    femur"): the site's pattern holds those words, so they are not marked on their own."""
    for pool in (inside, entities):
        sites = [ent for ent in pool if ent.label_ == "SITE" and _value(ent) == "intramedullary"]
        for site in sorted(sites, key=lambda span: _distance(anchor, span)):
            for token in site:
                if token.lower_ in words:
                    return words[token.lower_]
    return None


def _nearest_value(
    anchor: Span, inside: Sequence[Span], entities: Sequence[Span], label: str
) -> str | None:
    """The ``label`` entity's value in the device's phrase, else the nearest in the sentence."""
    for pool in (inside, entities):
        candidates = [ent for ent in pool if ent.label_ == label]
        if candidates:
            return _value(_nearest(anchor, candidates))
    return None


def _with_action(
    mention: DeviceStatement,
    anchor: Span,
    action: Span,
    times: Mapping[str, str],
    sentence: Span,
    said: str,
) -> DeviceStatement:
    section = action._.section_category
    time = "history" if action._.is_historical else times.get(section or "", "session")
    if action._.is_negated:
        certainty = "negated"
    elif action._.is_hypothetical:
        certainty = "hypothetical"
    elif action._.is_uncertain:
        certainty = "possible"
    else:
        certainty = "affirmed"
    return replace(
        mention,
        action=_value(action),
        time=time,
        certainty=certainty,
        quote=_quote(sentence, said, min(anchor.start, action.start), max(anchor.end, action.end)),
    )


def _quote(sentence: Span, said: str, start: int, end: int) -> str:
    """The sentence (``said``: its words), or at most QUOTE_LIMIT characters of it around tokens
    ``start:end``."""
    if len(said) <= QUOTE_LIMIT:
        return said
    begin = max(sentence.start, start - 4)
    stop = min(sentence.end, end + 4)
    doc = sentence.doc
    while begin > sentence.start and not doc[begin - 1].whitespace_:  # whole words: "hand-made"
        begin -= 1
    while stop < sentence.end and not doc[stop - 1].whitespace_:
        stop += 1
    window = " ".join(doc[begin:stop].text.split())
    if len(window) > QUOTE_LIMIT - 2:
        window = window[: QUOTE_LIMIT - 2].rsplit(" ", 1)[0]
    prefix = "…" if begin > sentence.start else ""
    suffix = "…" if stop < sentence.end else ""
    return f"{prefix}{window}{suffix}"


def _value(ent: Span) -> str:
    rule: Any = ent._.target_rule
    return str(rule.metadata["value"]) if rule is not None and rule.metadata else ent.label_.lower()


def _inherit(statement: DeviceStatement, earlier: DeviceStatement | None) -> DeviceStatement:
    """A bare later mention ("the rod was removed") is the device named earlier in the text."""
    if earlier is None or statement.drug or statement.metal:
        return statement
    return replace(
        statement,
        drug=earlier.drug,
        metal=earlier.metal,
        preparation=statement.preparation or earlier.preparation,
        tier=_inherited_tier(statement, earlier),
        bone=statement.bone or earlier.bone,
        side=statement.side or earlier.side,
    )


def _inherited_tier(statement: DeviceStatement, earlier: DeviceStatement) -> str | None:
    """A site named now wins; a tier assumed from the form alone yields to an earlier site."""
    if statement.tier not in (None, FORM_TIERS.get(statement.form)):
        return statement.tier
    return earlier.tier or statement.tier
