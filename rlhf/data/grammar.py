"""The language of the synthetic dataset: spoken sentences, task prompts, answers and reasoning.

A small English grammar (a few hundred words) makes short sentences for espeak-ng to speak, and
templates turn a clip's labels into the chat prompts, target answers and ``<think>`` reasoning the
SFT stage learns. Everything is drawn from a ``numpy.random.Generator``, so a seed fixes the text.

The words that name a label (``fast``, ``high``, ``male``, ...) never occur in the spoken
sentences, so a model cannot answer a paralinguistic question by reading the transcript.
``corpus()`` is every string this module can produce, for training the tiny model's tokenizer.
"""

from __future__ import annotations

import itertools

import numpy as np

# --- the spoken sentences ------------------------------------------------------------------------

DETERMINERS = ("the", "a", "my", "our", "your", "her", "his", "this", "that", "every")
NAMES = (
    "anna", "peter", "maria", "john", "lucy", "david", "emma", "thomas", "sarah", "daniel",
    "laura", "michael", "julia", "robert", "nina", "oscar", "clara", "victor", "helen", "samuel",
)  # fmt: skip
PEOPLE = (
    "farmer", "teacher", "doctor", "child", "baker", "pilot", "neighbor", "student", "driver",
    "painter", "sailor", "nurse", "singer", "writer", "gardener", "cook", "artist", "soldier",
    "waiter", "captain", "friend", "brother", "sister", "uncle", "aunt", "grandmother",
    "grandfather", "king", "queen", "boy", "girl", "family", "guest", "stranger", "manager",
)  # fmt: skip
ANIMALS = (
    "dog", "cat", "horse", "bird", "rabbit", "fox", "goat", "duck", "mouse", "bear",
    "lion", "monkey", "sheep", "cow", "parrot",
)  # fmt: skip
ADJECTIVES = (
    "old", "young", "tall", "small", "quiet", "happy", "tired", "clever", "brave", "busy",
    "kind", "hungry", "angry", "careful", "lucky", "famous", "friendly", "lonely", "proud",
    "gentle", "red", "blue", "green", "yellow", "white", "black", "brown", "golden", "bright",
    "dark", "heavy", "empty", "new", "wooden", "tiny", "huge", "clean", "dirty", "broken", "warm",
    "cold", "strange", "simple", "round", "little", "pretty", "shiny", "soft", "fresh", "wet",
)  # fmt: skip
OBJECTS = (
    "boat", "letter", "basket", "window", "book", "apple", "chair", "table", "door", "picture",
    "bottle", "ball", "cake", "coat", "hat", "key", "lamp", "map", "pen", "plate", "ring",
    "shoe", "bicycle", "bag", "cup", "flower", "garden", "kite", "car", "piano", "song",
    "story", "candle", "blanket", "bucket", "ladder", "mirror", "pillow", "present", "ticket",
    "umbrella", "wallet", "card", "jacket", "sandwich", "tent", "drum", "camera", "clock",
    "guitar", "bridge", "fence", "house", "road", "wall", "window", "newspaper", "carpet",
    "photo", "shirt",
)  # fmt: skip
VERBS = (
    "painted", "found", "carried", "bought", "cleaned", "opened", "watched", "sold", "fixed",
    "lost", "saw", "built", "washed", "moved", "brought", "took", "made", "kept", "wanted",
    "liked", "visited", "needed", "dropped", "pulled", "pushed", "closed", "filled", "borrowed",
    "hid", "shared", "carved", "measured", "drew", "picked", "counted", "touched", "checked",
    "held", "loved", "ordered", "packed", "lifted", "covered", "returned", "described",
    "noticed", "remembered", "delivered", "followed", "chose",
)  # fmt: skip
INTRANSITIVE = (
    "slept", "laughed", "waited", "arrived", "sang", "danced", "smiled", "worked", "played",
    "rested", "cried", "stayed", "listened", "studied", "cooked", "swam", "jumped", "shouted",
    "whistled", "read", "wrote", "sat", "stood", "walked", "ate",
)  # fmt: skip
PREPOSITIONS = ("in", "at", "near", "behind", "under", "beside", "across", "outside", "inside")
PLACES = (
    "river", "kitchen", "station", "market", "school", "park", "library", "harbor", "village",
    "forest", "office", "museum", "bakery", "hospital", "church", "beach", "farm", "hotel",
    "bank", "theater", "garage", "castle", "island", "valley", "hill", "lake", "square",
    "factory", "stadium", "airport", "barn", "cafe", "shop", "playground", "tower", "palace",
    "zoo", "city", "street", "yard",
)  # fmt: skip
TIMES = (
    "yesterday", "today", "this morning", "last night", "on monday", "on tuesday",
    "on wednesday", "on thursday", "on friday", "on saturday", "on sunday", "every day",
    "last week", "last summer", "in the evening", "at noon", "before dinner", "after lunch",
    "in winter", "in spring", "this afternoon", "at midnight", "last year", "once",
)  # fmt: skip
BEFORE_VERB = (  # "Anna quietly opened the door."
    "carefully", "quietly", "happily", "gently", "suddenly", "proudly", "finally", "often",
    "never", "always",
)  # fmt: skip
AFTER_VERB = (  # "The dog slept again."
    "carefully", "quietly", "happily", "gently", "proudly", "again", "together", "alone",
    "sadly", "politely",
)  # fmt: skip
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")

MIN_WORDS, MAX_WORDS = 4, 10


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _noun_phrase(rng: np.random.Generator, nouns: tuple[str, ...]) -> list[str]:
    words = [_pick(rng, DETERMINERS)]
    if _chance(rng, 0.6):
        words.append(_pick(rng, ADJECTIVES))
    words.append(_pick(rng, nouns))
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _subject(rng: np.random.Generator) -> list[str]:
    if _chance(rng, 0.3):
        return [_pick(rng, NAMES)]
    return _noun_phrase(rng, PEOPLE if _chance(rng, 0.75) else ANIMALS)


def _object(rng: np.random.Generator) -> list[str]:
    if _chance(rng, 0.2):  # regular plurals only: every object noun takes "s"
        return [_pick(rng, NUMBERS), _pick(rng, ADJECTIVES), _pick(rng, OBJECTS) + "s"]
    return _noun_phrase(rng, OBJECTS)


def _tail(rng: np.random.Generator) -> list[str]:
    words: list[str] = []
    if _chance(rng, 0.6):
        words += [_pick(rng, PREPOSITIONS), "the", _pick(rng, PLACES)]
    if _chance(rng, 0.5):
        words += _pick(rng, TIMES).split()
    return words


def _clause(rng: np.random.Generator) -> list[str]:
    """The words of one clause of 4–10 words."""
    while True:
        words = _subject(rng)
        if _chance(rng, 0.25):
            words.append(_pick(rng, INTRANSITIVE))
            if _chance(rng, 0.4):
                words.append(_pick(rng, AFTER_VERB))
        else:
            if _chance(rng, 0.15):
                words.append(_pick(rng, BEFORE_VERB))
            words += [_pick(rng, VERBS), *_object(rng)]
        words += _tail(rng)
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return words


def sentence(rng: np.random.Generator, clauses: int = 1) -> str:
    """One sentence of ``clauses`` clauses joined by "and" (4–10 words each), capitalised and
    ending with a full stop. Two clauses let fast speech fill as long a clip as slow speech."""
    words = _clause(rng)
    for _ in range(clauses - 1):
        words += ["and", *_clause(rng)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


# --- tasks, labels and prompts -------------------------------------------------------------------

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "gender": ("male", "female"),
    "pitch": ("low", "high"),
    "speed": ("slow", "normal", "fast"),
}
TASKS = ("transcribe", "gender", "pitch", "speed", "spoken")

# The first prompt of each task is its canonical wording; the others add variety.
PROMPTS: dict[str, tuple[str, ...]] = {
    "transcribe": (
        "Transcribe the audio.",
        "Write down exactly what the speaker says.",
        "What is said in this recording? Give the words.",
    ),
    "gender": (
        "Is the speaker male or female?",
        "Does this voice belong to a man or a woman?",
        "Listen to the voice. Is the speaker male or female?",
    ),
    "pitch": (
        "Is the speaker's voice high or low in pitch?",
        "Does the speaker talk with a high or a low pitch?",
        "Listen to the voice. Is its pitch high or low?",
    ),
    "speed": (
        "Is the speaker speaking slowly, at a normal pace, or fast?",
        "How fast does the speaker talk: slow, normal or fast?",
        "Listen to the pace. Is the speech slow, normal or fast?",
    ),
}
SPOKEN_PROMPTS: dict[str, tuple[str, ...]] = {
    "gender": (
        "Answer aloud: is the speaker male or female?",
        "Say out loud whether the speaker is male or female.",
    ),
    "pitch": (
        "Answer aloud: is the speaker's pitch high or low?",
        "Say out loud whether the voice is high or low in pitch.",
    ),
    "speed": (
        "Answer aloud: is the speaker speaking slowly, at a normal pace, or fast?",
        "Say out loud whether the speech is slow, normal or fast.",
    ),
}
# Each answer names the label word itself, so a label can be read back from the text.
ANSWERS: dict[str, tuple[str, ...]] = {
    "gender": ("The speaker is {level}.", "{Level}.", "It is a {level} voice."),
    "pitch": ("The pitch is {level}.", "{Level}.", "The speaker's voice is {level} in pitch."),
    "speed": ("The speech is {level}.", "{Level}.", "The speaker talks at a {level} pace."),
}
SPOKEN_REPLIES: dict[str, tuple[str, ...]] = {
    "gender": ("The speaker is {level}.", "I think the speaker is {level}."),
    "pitch": ("The pitch is {level}.", "The voice is {level} in pitch."),
    "speed": ("The speech is {level}.", "The speaker talks at a {level} pace."),
}
# Words users and rewards use for the labels; only for the tokenizer's corpus.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "male": ("man", "masculine", "boy", "he"),
    "female": ("woman", "feminine", "girl", "she"),
    "low": ("deep", "low-pitched", "bass"),
    "high": ("high-pitched", "shrill", "squeaky"),
    "slow": ("slowly", "sluggish", "unhurried", "leisurely"),
    "normal": ("moderate", "average", "medium", "regular"),
    "fast": ("quick", "quickly", "rapid", "rapidly", "speedy", "hurried"),
}


def question(task: str, rng: np.random.Generator, dimension: str | None = None) -> str:
    """The user's question for ``task`` (for ``spoken``, about ``dimension``)."""
    if task == "spoken":
        return _pick(rng, SPOKEN_PROMPTS[dimension])
    return _pick(rng, PROMPTS[task])


def answer(dimension: str, level: str, rng: np.random.Generator, spoken: bool = False) -> str:
    """A short answer naming ``level``; ``spoken`` picks the full sentences said aloud."""
    template = _pick(rng, (SPOKEN_REPLIES if spoken else ANSWERS)[dimension])
    return template.format(level=level, Level=level.capitalize())


def spoken_replies() -> list[str]:
    """Every sentence a spoken answer can be, in a fixed order."""
    return sorted(
        template.format(level=level)
        for dimension, templates in SPOKEN_REPLIES.items()
        for template in templates
        for level in DIMENSIONS[dimension]
    )


# --- reasoning -----------------------------------------------------------------------------------

OPENERS = (
    "Let me listen to the clip carefully.",
    "I focus on the sound of the voice, not only the words.",
    "First I check the overall character of the recording.",
    "The recording is short and clean, with a single speaker.",
    "There is no background noise, so the voice is easy to judge.",
)
# Gender cues speak of timbre, not pitch height: pitch is varied within each voice, so a man's
# raised voice can be higher than a woman's lowered one.
CUES: dict[str, tuple[str, ...]] = {
    "male": (
        "The timbre is full and resonant.",
        "The formants are low, as from a longer vocal tract.",
        "The vowels have a heavy chest resonance.",
        "The resonances sound like an adult man's voice.",
        "Nothing in the timbre points to a female speaker.",
        "Whatever the intonation, the voice quality stays masculine.",
        "The overall tone is darker than a female voice.",
    ),
    "female": (
        "The timbre is light and bright.",
        "The formants are high, as from a shorter vocal tract.",
        "The vowels sound clear with a breathy quality.",
        "The resonances sound like an adult woman's voice.",
        "Nothing in the timbre points to a male speaker.",
        "Whatever the intonation, the voice quality stays feminine.",
        "The overall tone is brighter than a male voice.",
    ),
    "low": (
        "The pitch sits low for this kind of voice.",
        "The speaker seems to use the bottom of the vocal range.",
        "The intonation stays down and rarely rises.",
        "Compared with the voice's natural register, the tone is lowered.",
        "The stressed syllables do not jump up much.",
        "The voice sounds heavy and grounded.",
    ),
    "high": (
        "The pitch sits high for this kind of voice.",
        "The speaker seems to use the top of the vocal range.",
        "The intonation stays up and sounds raised.",
        "Compared with the voice's natural register, the tone is lifted.",
        "The stressed syllables jump up clearly.",
        "The voice sounds light and tense.",
    ),
    "slow": (
        "The words are drawn out with long vowels.",
        "There are clear pauses between the words.",
        "The syllables come one at a time, unhurried.",
        "The speaker takes much longer than usual for a short sentence.",
        "Each word is stretched, so the pace is low.",
    ),
    "normal": (
        "The words come at an ordinary, steady rhythm.",
        "The pauses between words are short but clear.",
        "The syllables are neither stretched nor rushed.",
        "The sentence takes about as long as usual speech.",
        "The pace sounds like a calm conversation.",
    ),
    "fast": (
        "The words run into each other.",
        "There are almost no pauses between the words.",
        "The syllables are clipped and rushed.",
        "The speaker finishes the sentence much sooner than usual.",
        "The vowels are short, so the pace is high.",
    ),
    "transcribe": (
        "The speech is clear enough to follow word by word.",
        "The speaker pronounces every word distinctly.",
        "I will write the words in order with normal punctuation.",
        "The sentence is a simple statement.",
        "I check each word against what I heard.",
    ),
}
CONCLUSIONS: dict[str, tuple[str, ...]] = {
    "gender": ("So the speaker is {level}.", "Taken together, the voice is {level}."),
    "pitch": ("So the pitch is {level}.", "Taken together, the pitch is {level}."),
    "speed": ("So the pace is {level}.", "Taken together, the speech is {level}."),
    "transcribe": ("Now I write the transcript.", "So I can write down the sentence."),
}
SPOKEN_CLOSER = "I will say the answer aloud."
RATE_CUE = (
    "The sentence has {words} words in about {seconds} seconds, roughly {wpm} words per minute."
)
TRANSCRIPT_CUES = (
    "I hear {words} words.",
    'The sentence begins with "{first}".',
    'The sentence ends with "{last}".',
)
# Think lengths (in words) are drawn from this mixture so that the SFT policy has a varied,
# partly long reasoning habit for RL's think-length rewards to reshape: (probability, low, high).
# At most 40: with up to 80 the tiny SFT policy, at the learning rate where it learns to hear
# (3e-4), did not learn where a long reasoning ends, and greedy decoding ran on for 176 words.
THINK_LENGTHS = ((0.6, 5, 12), (0.3, 12, 25), (0.1, 25, 40))
MAX_THINK_WORDS = 40


def _think_length(rng: np.random.Generator) -> int:
    weights = np.array([w for w, _, _ in THINK_LENGTHS])
    _, low, high = THINK_LENGTHS[int(rng.choice(len(THINK_LENGTHS), p=weights))]
    return int(rng.integers(low, high + 1))


def think(
    task: str,
    rng: np.random.Generator,
    *,
    dimension: str | None = None,
    level: str | None = None,
    transcript: str = "",
    seconds: float = 0.0,
) -> str:
    """Reasoning for one target: cues for the true ``level`` (or the ``transcript``), then a
    conclusion; about 5–40 words, drawn from ``THINK_LENGTHS``."""
    target = _think_length(rng)
    words = transcript.rstrip(".").split()
    if task == "transcribe":
        pool = [*CUES["transcribe"]]
        pool += [
            c.format(words=len(words), first=words[0], last=words[-1]) for c in TRANSCRIPT_CUES
        ]
        conclusion = _pick(rng, CONCLUSIONS["transcribe"])
    else:
        pool = [*CUES[level]]
        if dimension == "speed" and seconds > 0:
            wpm = round(len(words) * 60 / seconds)
            pool.append(RATE_CUE.format(words=len(words), seconds=f"{seconds:.1f}", wpm=wpm))
        conclusion = _pick(rng, CONCLUSIONS[dimension]).format(level=level)
    if task == "spoken":
        conclusion += " " + SPOKEN_CLOSER
    pool = [pool[i] for i in rng.permutation(len(pool))]
    if _chance(rng, 0.5):
        pool.insert(0, _pick(rng, OPENERS))
    parts: list[str] = []
    count = len(conclusion.split())
    for cue in pool:
        if count >= target or count + len(cue.split()) > MAX_THINK_WORDS:
            break
        parts.append(cue)
        count += len(cue.split())
    return " ".join([*parts, conclusion])


# --- tokenizer corpus ----------------------------------------------------------------------------

BASIC_ENGLISH = (
    "Hello, how are you? I am fine, thank you. Yes. No. Maybe. Please. Sorry. "
    "What, who, where, when, why, which, how. I, you, he, she, it, we, they, me, him, us, them. "
    "Is, are, was, were, be, been, have, has, had, do, does, did, can, could, will, would, "
    "should, may, might, must, not, and, or, but, if, then, so, because, with, without, for, of, "
    "to, from, by, on, about, into, over, than, very, more, most, some, any, all, one, zero. "
    "The answer is correct. The answer is wrong. Speaker, voice, audio, clip, speech, pitch, "
    "speed, pace, gender, transcript, transcribe, word, words, sentence, second, seconds, minute."
)


def vocabulary() -> list[str]:
    """Every word the sentence grammar can produce (lower case, plurals included)."""
    words = {
        *DETERMINERS, "an", *NAMES, *PEOPLE, *ANIMALS, *ADJECTIVES, *OBJECTS,
        *(noun + "s" for noun in OBJECTS), *VERBS, *INTRANSITIVE, *PREPOSITIONS, *PLACES,
        *BEFORE_VERB, *AFTER_VERB, *NUMBERS, "and",
    }  # fmt: skip
    words.update(word for time in TIMES for word in time.split())
    return sorted(words)


def corpus() -> str:
    """Text covering everything the dataset can say, for training the tiny model's tokenizer."""
    lines = [" ".join(vocabulary()), " ".join(w.capitalize() for w in vocabulary())]
    lines += [" ".join(TIMES), BASIC_ENGLISH, " ".join(str(n) for n in range(101))]
    lines += ["0123456789 . , ; : ! ? ' \" ( ) - %"]
    lines += [p for prompts in (*PROMPTS.values(), *SPOKEN_PROMPTS.values()) for p in prompts]
    for dimension, levels in DIMENSIONS.items():
        for level, spoken in itertools.product(levels, (False, True)):
            templates = (SPOKEN_REPLIES if spoken else ANSWERS)[dimension]
            lines += [t.format(level=level, Level=level.capitalize()) for t in templates]
            lines += [t.format(level=level) for t in CONCLUSIONS[dimension]]
        lines.append(" ".join(levels))
    lines += [" ".join((label, *words)) for label, words in SYNONYMS.items()]
    lines += [*OPENERS, *(cue for cues in CUES.values() for cue in cues)]
    lines += [*CONCLUSIONS["transcribe"], SPOKEN_CLOSER, RATE_CUE, *TRANSCRIPT_CUES]
    rng = np.random.default_rng(0)
    lines += [sentence(rng) for _ in range(200)]
    return "\n".join(lines) + "\n"
