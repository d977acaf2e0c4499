"""The vocabulary of the offline ``builtin`` WordPiece tokenizer (see :mod:`rap.model.tokenizer`).

Shipped as Python (not a data file) so it travels with the package without package-data
settings. Order fixes the ids: special tokens first ([PAD] = 0 as in BERT), then the task
tokens of appendix A.1, then single characters and their ``##`` continuations (so every
English word tokenises, at worst character by character), then whole words.
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Appendix A.1 (BLIP): "[ENC]" starts the video-grounded encoder input (ITM), "[DEC]" the decoder's.
TASK_TOKENS = ("[ENC]", "[DEC]")

_CHARS = string.ascii_lowercase + string.digits
_PUNCT = string.punctuation

# Common English words, including everything a synthetic corpus of moving coloured shapes
# would say (colours, shapes, motions, positions, counts, backgrounds, time words).
_WORDS = """
the a an and or but of to in on at by for with from into onto over under above below
is are was were be been being has have had do does did not no yes it its this that these
those there here he she they we you i his her their our your him them who what which when
where why how all any some each every both either neither other another such same only own
very more most less least much many few several one two three four five six seven eight
nine ten eleven twelve twenty hundred first second third fourth fifth last next once twice
single double pair couple group number count counts
red green blue yellow purple orange white black cyan pink magenta brown grey gray gold
silver violet teal navy beige maroon olive lime turquoise dark light bright pale colour
color colours colors coloured colored colourful colorful shade
circle circles square squares triangle triangles star stars ring rings cross crosses
rectangle rectangles oval ovals diamond diamonds hexagon pentagon heart hearts line lines
dot dots disk disc box boxes ball balls shape shapes object objects block blocks
moves move moving moved slides slide sliding slid goes go going went travels travel
left right up down upward upwards downward downwards forward backward across along
around through toward towards away back side sides sideways diagonally diagonal
horizontally vertically horizontal vertical straight
appears appear appearing appeared disappears disappear disappearing disappeared
vanishes vanish fades fade fading grows grow growing grew shrinks shrink shrinking shrank
spins spin spinning spun rotates rotate rotating rotation turns turn turning turned
bounces bounce bouncing bounced jumps jump jumping falls fall falling rises rise rising
flies fly flying floats float floating stays stay staying stops stop stopping starts
start starting remains remain still static stationary moves fast slow slowly quickly
fast faster slower speed steadily suddenly gradually briefly
then after before first while during until since meanwhile finally later earlier
again also together apart beside besides between behind front near far close
background foreground top bottom corner corners centre center middle edge edges
upper lower inner outer half whole part screen frame frames scene image picture video
clip view camera shot wall floor sky ground water field grass road street city room
large small big little tiny huge medium size sized larger smaller bigger tall short long
wide narrow thick thin round flat solid hollow empty full striped plain textured
man woman men women person people boy girl child children kid kids baby dog cat bird
horse car bus truck bike bicycle train plane boat tree trees flower flowers house
building table chair door window hand hands face head eye eyes hair food
walks walk walking runs run running sits sit sitting stands stand standing plays play
playing talks talk talking looks look looking holds hold holding takes take taking
makes make making shows show showing gives give giving uses use using puts put putting
opens open closes close eats eat eating drinks drink dances dance dancing sings sing
singing swims swim swimming rides ride riding drives drive driving cooks cook cooking
watches watch watching reads read reading writes write writing smiles smile laughs
laugh throws throw catches catch kicks kick pushes push pulls pull lifts lift carries
carry waves wave points point enters enter leaves leave exits exit comes come coming
meets meet passes pass crosses follows follow chases chase hits hit touches touch
changes change changing becomes become turns joins join splits split merges merge
people outside inside indoors outdoors day night morning evening sun sunny rain snow
white new old good great nice beautiful young happy funny
can will would could should may might must shall
about against among off out up down over again further just now very too so than
sea beach mountain river lake forest park garden kitchen office stage music song game
sport sports team football soccer basketball tennis news talk interview cartoon
animation animated text words title logo
as birthday cheer contracts definition drifts drops expands gets high holidays late leftwards rightwards
mood motion party sinks someone town
""".split()


def vocabulary() -> list[str]:
    """Token list in id order (duplicates removed, first occurrence wins)."""
    tokens: list[str] = [*SPECIAL_TOKENS, *TASK_TOKENS]
    tokens += list(_CHARS) + list(_PUNCT)
    tokens += ["##" + c for c in _CHARS + _PUNCT]
    tokens += _WORDS
    seen: set[str] = set()
    out = []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out
