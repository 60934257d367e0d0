"""`rlhf make-data`: synthetic paralinguistic speech, spoken by espeak-ng, as chat rows.

Each clip is one sentence from ``grammar`` spoken with three controlled, well-separated
paralinguistic levels:

* gender: a male or a female speaker, one of 33 espeak-ng voice variants (``VOICES``). The
  speakers are split: the held-out clips are spoken only by voices that never speak in training,
  so the test figures say whether a policy hears gender or only recognises the training voices;
* pitch: low or high *within that voice* (espeak pitch 0–5 vs 90–99 of 0–100: the voice's f0
  rises about 2×). The voices are those where every high clip lies above every low one (male high
  ≥ 157 Hz, female low ≤ 154 Hz, measured), so f0 alone answers the pitch question; narrower
  ranges or other voices put a male voice's high pitch on a female voice's low one, and pitch
  became a function of gender and f0 together that the tiny model never learnt;
* speed: slow, normal or fast (100–120, 160–180, 240–270 words per minute). The clip's length
  is drawn first, the same way for every speed (``DURATION``), and the sentence is chosen to fill
  it: fast speech says more words, slow speech fewer. Duration alone then tells nothing about the
  speed (a duration classifier is at chance); only the rate of the words does.

A clip yields chat rows for ``tasks_per_clip`` of the five tasks (by default all five, in training
too: with one task per clip the tiny SFT model stayed at chance on gender and pitch, measured;
fewer rows per clip keep the dataset smaller): ``transcribe``, ``gender``, ``pitch``, ``speed``, and ``spoken`` — a question about
one dimension to be answered aloud, whose target carries the codes (``codec.KMeansCodec``, fitted
on the training clips) of espeak speech of the reply in a fixed assistant voice. Tasks are
balanced over each split and levels within each task; the exact espeak pitch and rate inside a
level are drawn at random. Targets have ``<think>`` reasoning of 5–40 words (``grammar.think``).
A row is what ``rlhf.data.loading.row_to_sample`` reads plus the labels and SFT targets:
``id``, ``audio`` (16 kHz FLAC bytes), ``messages`` (one user turn: an audio part, then the
question), ``task``, the clip's ``transcript`` / ``speaker`` / ``gender`` / ``pitch`` /
``speed``, ``label``
(the expected answer to the task), ``target_think`` / ``target_answer`` /
``target_audio_codes`` (what SFT trains on) and ``spoken`` (answer aloud).

The same arguments give byte-identical files, whatever ``workers``: every random choice comes
from the seed, and each utterance is synthesised by a fresh copy of libespeak-ng (``_Espeak``).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import io
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile as sf
import soxr

from rlhf.data import grammar

SAMPLE_RATE = 16_000
LANGUAGE = "en-us"
# espeak-ng voice variants (each a speaker) per split: the test speakers never speak in training.
VOICES = {
    "train": {
        "male": (
            "m2", "m3", "m6", "m7", "Diogo", "miguel", "travis", "norbert", "pedro", "pablo",
            "gustave", "grandpa", "Michael", "Tweaky", "ed", "Marco",
        ),
        "female": ("f1", "f2", "f3", "f5", "steph", "steph2", "linda", "shelby"),
    },
    "test": {
        "male": ("m5", "michel", "Mario", "Jacky", "john", "antonio"),
        "female": ("f4", "steph3", "belinda"),
    },
}  # fmt: skip
PITCH = {"low": (0, 5), "high": (90, 99)}  # espeak pitch 0-100, relative to the voice
SPEED = {"slow": (100, 120), "normal": (160, 180), "fast": (240, 270)}  # words per minute
ASSISTANT = {"voice": f"{LANGUAGE}+f5", "pitch": 50, "rate": 170}  # speaks the spoken replies
DURATION = (2.2, 3.6)  # seconds: every clip's length is drawn from this range, whatever its speed
DURATION_TOLERANCE = 0.15  # seconds a clip may miss its drawn length by (when a candidate does)
CANDIDATES = 8  # sentences tried per clip, in order, until one fills the drawn length
CODEC_FIT_CLIPS = 400  # training clips the codec is fitted on (about 30 000 frames of 40 ms)

# Features of the dataset rows (described in the module docstring), in column order.
COLUMNS = (
    "id", "audio", "messages", "task", "transcript", "speaker", "gender", "pitch", "speed", "label",
    "target_think", "target_answer", "target_audio_codes", "spoken",
)  # fmt: skip


# --- espeak-ng -----------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """One utterance from a private copy of libespeak-ng, loaded and unloaded around it.

    libespeak-ng keeps synthesis state in C statics (the pitch-flutter phase, the automatic gain,
    the echo buffer) that nothing in its API resets, so the same text comes out slightly
    differently depending on what was spoken before. Loading a fresh copy of the library for each
    utterance (about 1 ms) makes a clip a pure function of its text, voice and settings, however
    clips are spread over processes. The noise generators are seeded too (breathy voices).
    Not thread-safe: use processes.
    """

    def __init__(self):
        self._data = espeakng_loader.get_data_path().encode()
        self._libc = ctypes.CDLL(None)

    def _fresh_library(self) -> ctypes.CDLL:
        handle, path = tempfile.mkstemp(suffix=".so", prefix="libespeak-ng-")
        try:
            os.close(handle)
            shutil.copyfile(espeakng_loader.get_library_path(), path)
            lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        finally:
            os.unlink(path)  # the mapping stays; the next load gets a new file, a fresh library
        c = ctypes
        lib.espeak_Initialize.argtypes = [c.c_int, c.c_int, c.c_char_p, c.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [c.c_char_p]
        lib.espeak_SetParameter.argtypes = [c.c_int, c.c_int, c.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [c.c_long]
        lib.espeak_Synth.argtypes = [
            c.c_char_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint, c.c_void_p, c.c_void_p,
        ]  # fmt: skip
        return lib

    def __call__(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
        """``text`` as int16 samples at espeak-ng's own rate (22 050 Hz), and that rate."""
        chunks: list[np.ndarray] = []

        def collect(samples, count, _events):
            if samples and count > 0:
                chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
            return 0

        callback = _SynthCallback(collect)
        lib = self._fresh_library()
        try:
            rate_hz = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, _INITIALIZE_DONT_EXIT
            )
            if rate_hz <= 0:
                raise RuntimeError(f"espeak-ng failed to initialise with data at {self._data!r}")
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice!r}")
            lib.espeak_SetParameter(_RATE, rate, 0)
            lib.espeak_SetParameter(_PITCH, pitch, 0)
            lib.espeak_ng_SetRandSeed(1)
            self._libc.srand(1)
            data = text.encode()
            status = lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != 0:
                raise RuntimeError(f"espeak-ng failed ({status}) to speak {text!r}")
            lib.espeak_Synchronize()
            lib.espeak_Terminate()
        finally:
            self._libc.dlclose(ctypes.c_void_p(lib._handle))
        if not chunks:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}")
        return np.concatenate(chunks), rate_hz


_espeak = functools.cache(_Espeak)


def check_voice(voice: str) -> None:
    """Raise if the ``language+variant`` voice is not in espeakng_loader's data."""
    data = Path(espeakng_loader.get_data_path())
    _, _, variant = voice.partition("+")
    if variant and not (data / "voices" / "!v" / variant).is_file():
        raise ValueError(f"espeak-ng voice variant {variant!r} not found in {data / 'voices/!v'}")


def synthesize(text: str, voice: str, *, rate: int = 175, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng ``voice`` at ``rate`` words per minute and espeak ``pitch``
    (0–100), as 16 kHz mono int16 PCM. Deterministic."""
    check_voice(voice)
    pcm, rate_hz = _espeak()(text, voice, rate, pitch)
    wav = soxr.resample(pcm.astype(np.float32) / 32768.0, rate_hz, SAMPLE_RATE)
    return np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)


def to_flac(pcm: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM as float32, the way soundfile (and so ``load_audio``) reads it back."""
    return pcm.astype(np.float32) / 32768.0


# --- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """Everything that decides one clip's audio and rows. ``texts`` are candidate sentences, best
    first; ``render_clip`` speaks the first that lasts ``duration`` seconds (within tolerance)."""

    id: str
    texts: tuple[str, ...]
    duration: float
    gender: str
    voice: str
    pitch: str
    pitch_value: int
    speed: str
    rate: int
    tasks: tuple[str, ...]
    spoken_dimension: str


def _balanced(levels: tuple[str, ...], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` labels, each level equally often (up to one), in random order."""
    return [levels[i] for i in rng.permutation(np.resize(np.arange(len(levels)), n))]


def _syllables(word: str) -> int:
    """Vowel groups, less a silent final e: close enough to time speech (English only)."""
    count = len(re.findall(r"[aeiouy]+", word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(1, count)


def estimated_seconds(text: str, rate: int) -> float:
    """How long espeak-ng takes to say ``text`` at ``rate`` words per minute: a linear fit in
    syllables and words to 360 clips of six voices at 100–270 wpm (residual about 35/rate s)."""
    words = text.lower().rstrip(".").split()
    return (37 + 16 * sum(map(_syllables, words)) + 25 * len(words)) / rate


def _sentences(duration: float, rate: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """``CANDIDATES`` unused sentences whose estimated length at ``rate`` is nearest ``duration``,
    from sentences of one and of two clauses (4–10 words each) alike."""
    drawn: dict[str, float] = {}
    while len(drawn) < 6 * CANDIDATES:
        text = grammar.sentence(rng, clauses=1 + len(drawn) % 2)
        if text not in taken:
            drawn[text] = abs(estimated_seconds(text, rate) - duration)
    return sorted(drawn, key=drawn.__getitem__)[:CANDIDATES]


def plan_clips(
    split: str,
    n: int,
    tasks_per_clip: int,
    rng: np.random.Generator,
    taken: set[str],
    voices: dict[str, tuple[str, ...]] | None = None,
) -> list[Clip]:
    """The clips of one split, spoken by ``voices`` (``VOICES[split]`` by default); sentences in
    ``taken`` (other splits' candidates) are not reused.

    Clip i asks ``tasks_per_clip`` consecutive tasks (cyclically) from a balanced first task;
    within each first-task group every dimension's levels, and the spoken rows' dimensions, are
    balanced, so each question is asked about equally many clips of each level. The clip's length
    is drawn from ``DURATION`` before its sentence, independently of its speed.
    """
    voices = voices or VOICES[split]
    tasks = grammar.TASKS
    first_task = rng.permutation(np.resize(np.arange(len(tasks)), n))
    labels: dict[str, list[str]] = {key: [""] * n for key in (*grammar.DIMENSIONS, "spoken")}
    for task in range(len(tasks)):
        group = np.flatnonzero(first_task == task)
        choices = {**grammar.DIMENSIONS, "spoken": tuple(grammar.DIMENSIONS)}
        for key, levels in choices.items():
            for i, level in zip(group, _balanced(levels, len(group), rng), strict=True):
                labels[key][i] = level
    clips = []
    for i in range(n):
        gender, pitch, speed = labels["gender"][i], labels["pitch"][i], labels["speed"][i]
        variants = voices[gender]
        rate = int(rng.integers(SPEED[speed][0], SPEED[speed][1] + 1))
        duration = round(float(rng.uniform(*DURATION)), 3)
        texts = _sentences(duration, rate, rng, taken)
        taken.update(texts)
        clip_tasks = {tasks[(first_task[i] + j) % len(tasks)] for j in range(tasks_per_clip)}
        clips.append(
            Clip(
                id=f"{split}-{i:05d}",
                texts=tuple(texts),
                duration=duration,
                gender=gender,
                voice=f"{LANGUAGE}+{variants[int(rng.integers(len(variants)))]}",
                pitch=pitch,
                pitch_value=int(rng.integers(PITCH[pitch][0], PITCH[pitch][1] + 1)),
                speed=speed,
                rate=rate,
                tasks=tuple(t for t in tasks if t in clip_tasks),
                spoken_dimension=labels["spoken"][i],
            )
        )
    return clips


def render_clip(clip: Clip) -> tuple[str, bytes]:
    """The sentence spoken and the clip's audio as FLAC bytes (runs in pool workers): the first
    candidate within ``DURATION_TOLERANCE`` of the clip's length, else the nearest."""
    best: tuple[float, str, np.ndarray] | None = None
    for text in clip.texts:
        pcm = synthesize(text, clip.voice, rate=clip.rate, pitch=clip.pitch_value)
        miss = abs(len(pcm) / SAMPLE_RATE - clip.duration)
        if best is None or miss < best[0]:
            best = (miss, text, pcm)
        if miss <= DURATION_TOLERANCE:
            break
    assert best is not None, f"{clip.id} has no candidate sentence"
    return best[1], to_flac(best[2])


# --- rows ----------------------------------------------------------------------------------------


def _messages(question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "audio", "text": None}, {"type": "text", "text": question}],
        }
    ]


def clip_rows(
    clip: Clip,
    text: str,
    flac: bytes,
    seconds: float,
    replies: dict[str, list[int]],
    rng: np.random.Generator,
) -> list[dict]:
    """One chat row per task of ``clip`` (which says ``text``), with the columns of ``COLUMNS``."""
    levels = {"gender": clip.gender, "pitch": clip.pitch, "speed": clip.speed}
    rows = []
    for task in clip.tasks:
        spoken = task == "spoken"
        dimension = clip.spoken_dimension if spoken else task
        codes: list[int] = []
        if task == "transcribe":
            label = target = text
            reasoning = grammar.think(task, rng, transcript=text)
        else:
            level = levels[dimension]
            target = grammar.answer(dimension, level, rng, spoken=spoken)
            label = target if spoken else level
            codes = replies[target] if spoken else []
            reasoning = grammar.think(
                task, rng, dimension=dimension, level=level, transcript=text, seconds=seconds
            )
        rows.append(
            {
                "id": f"{clip.id}-{task}",
                "audio": flac,
                "messages": _messages(grammar.question(task, rng, dimension)),
                "task": task,
                "transcript": text,
                "speaker": clip.voice,
                **levels,
                "label": label,
                "target_think": reasoning,
                "target_answer": target,
                "target_audio_codes": codes,
                "spoken": spoken,
            }
        )
    return rows


def features():
    """The ``datasets.Features`` of the rows."""
    from datasets import Features, List, Value  # see build() for why here

    string = Value("string")
    return Features(
        {
            "id": string,
            "audio": Value("binary"),
            "messages": List({"role": string, "content": List({"type": string, "text": string})}),
            "task": string,
            "transcript": string,
            "speaker": string,
            "gender": string,
            "pitch": string,
            "speed": string,
            "label": string,
            "target_think": string,
            "target_answer": string,
            "target_audio_codes": List(Value("int32")),
            "spoken": Value("bool"),
        }
    )


# --- building ------------------------------------------------------------------------------------


def _render_all(clips: list[Clip], workers: int, description: str) -> list[tuple[str, bytes]]:
    from rich.progress import track

    if workers <= 1:
        return [render_clip(c) for c in track(clips, description=description)]
    # forkserver: workers start from a clean process, not a fork of a parent holding torch threads
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = pool.map(render_clip, clips, chunksize=16)
        return list(track(results, total=len(clips), description=description))


def build(
    out_dir: str | os.PathLike,
    *,
    num_clips: int = 1200,
    test_clips: int = 300,
    seed: int = 0,
    tasks_per_clip: int = len(grammar.TASKS),
    test_tasks_per_clip: int = len(grammar.TASKS),
    codebook_size: int = 64,
    workers: int = 1,
) -> dict:
    """Write ``out_dir/data`` (train + test), ``out_dir/codec``, ``metadata.json`` and
    ``README.md``; return the metadata."""
    # Imported here, not at the top: pool workers import this module only to synthesise.
    import datasets
    import torch

    from rlhf.data.codec import KMeansCodec

    for name, value in (
        ("tasks_per_clip", tasks_per_clip),
        ("test_tasks_per_clip", test_tasks_per_clip),
    ):
        if not 1 <= value <= len(grammar.TASKS):
            raise ValueError(f"{name} must be in 1..{len(grammar.TASKS)}, got {value}")
    if num_clips < 1 or test_clips < 1:
        raise ValueError(f"need at least one clip per split, got {num_clips} and {test_clips}")
    speakers = [f"{LANGUAGE}+{v}" for split in VOICES.values() for vs in split.values() for v in vs]
    for voice in (*speakers, ASSISTANT["voice"]):
        check_voice(voice)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    plans = {
        "test": plan_clips("test", test_clips, test_tasks_per_clip, rng, taken),
        "train": plan_clips("train", num_clips, tasks_per_clip, rng, taken),
    }
    audio = {
        split: _render_all(clips, workers, f"speaking {split}") for split, clips in plans.items()
    }

    # The codec learns from the training clips and the assistant's replies, then encodes the replies.
    replies = {
        text: synthesize(text, ASSISTANT["voice"], rate=ASSISTANT["rate"], pitch=ASSISTANT["pitch"])
        for text in grammar.spoken_replies()
    }
    train_wavs = [
        sf.read(io.BytesIO(flac), dtype="float32")[0]
        for _, flac in audio["train"][:CODEC_FIT_CLIPS]
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the codec's FFTs are tiny: extra threads only contend
    try:
        codec = KMeansCodec.fit(
            [*train_wavs, *(pcm_to_float(pcm) for pcm in replies.values())],
            codebook_size,
            seed=seed,
        )
        reply_codes = {text: codec.encode(pcm_to_float(pcm)) for text, pcm in replies.items()}
    finally:
        torch.set_num_threads(threads)

    splits = {}
    for split, clips in plans.items():
        rows: list[dict] = []
        for clip, (text, flac) in zip(clips, audio[split], strict=True):
            seconds = sf.info(io.BytesIO(flac)).duration
            rows += clip_rows(clip, text, flac, seconds, reply_codes, rng)
        splits[split] = datasets.Dataset.from_list(rows, features=features())

    metadata = _metadata(plans, splits, seed, codec)
    datasets.DatasetDict(splits).save_to_disk(str(out_dir / "data"))
    codec.save(out_dir / "codec")
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out_dir / "README.md").write_text(_readme(metadata))
    return metadata


def _espeak_version() -> str:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


def _metadata(plans, splits, seed, codec) -> dict:
    counts = {}
    for split, clips in plans.items():
        counts[split] = {
            "clips": len(clips),
            "rows": len(splits[split]),
            "tasks_per_clip": len(clips[0].tasks),
            "speakers": len({c.voice for c in clips}),
            "tasks": dict(sorted(Counter(splits[split]["task"]).items())),
            **{
                dim: dict(sorted(Counter(getattr(c, dim) for c in clips).items()))
                for dim in grammar.DIMENSIONS
            },
        }
    return {
        "generator": "rlhf make-data",
        "seed": seed,
        "splits": counts,
        "sample_rate": SAMPLE_RATE,
        "espeak_ng": _espeak_version(),
        "voices": {
            split: {g: [f"{LANGUAGE}+{v}" for v in vs] for g, vs in genders.items()}
            for split, genders in VOICES.items()
        },
        "duration_s": DURATION,
        "pitch_espeak": PITCH,
        "speed_wpm": SPEED,
        "assistant_voice": ASSISTANT,
        "codec": {
            "type": type(codec).__name__,
            "codebook_size": codec.codebook_size,
            "frame_rate": codec.frame_rate,
            "path": "codec",
        },
        "example_clip": asdict(plans["train"][0]),
    }


def _readme(metadata: dict) -> str:
    train, test = metadata["splits"]["train"], metadata["splits"]["test"]
    return f"""# Synthetic paralinguistic speech (made by `rlhf make-data`)

English sentences spoken by espeak-ng {metadata["espeak_ng"]} with controlled gender (voice
variant), pitch (low / high within the voice) and speed (slow / normal / fast), as chat rows for a
speech LLM. Seed {metadata["seed"]}; train: {train["clips"]} clips, {train["rows"]} rows
({train["tasks_per_clip"]} task(s) per clip); test: {test["clips"]} clips, {test["rows"]} rows
({test["tasks_per_clip"]} task(s) per clip).

- `data/`: `datasets.DatasetDict` (`load_from_disk`, or `rlhf.data.loading.load_prompt_dataset`).
  Columns: `id`, `audio` (16 kHz FLAC bytes), `messages` (prompt turns), `task`
  (transcribe | gender | pitch | speed | spoken), `transcript`, `speaker` (the espeak-ng voice;
  the test split's speakers never speak in train), `gender`, `pitch`, `speed`,
  `label`, `target_think`, `target_answer`, `target_audio_codes` (spoken rows), `spoken`.
- `codec/`: the k-means audio codec ({metadata["codec"]["codebook_size"]} codes at 25 Hz) that
  made `target_audio_codes` — a stand-in for CosyVoice 2 tokens (`rlhf.data.codec.KMeansCodec`).
- `metadata.json`: the levels, voices and label counts.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write data/, codec/, metadata.json into")
    parser.add_argument("--num-clips", type=int, default=1200, help="training clips")
    parser.add_argument("--test-clips", type=int, default=300, help="held-out clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tasks-per-clip",
        type=int,
        default=len(grammar.TASKS),
        help="training rows per clip, rotating through the five tasks (default 5: all of them)",
    )
    parser.add_argument(
        "--test-tasks-per-clip",
        type=int,
        default=len(grammar.TASKS),
        help="held-out rows per clip (default 5: every question about every clip)",
    )
    parser.add_argument(
        "--codebook-size",
        type=int,
        default=64,
        help="audio codes of the stand-in codec; at most the model's number of audio codes",
    )
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="synthesis processes"
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    metadata = build(
        args.out_dir,
        num_clips=args.num_clips,
        test_clips=args.test_clips,
        seed=args.seed,
        tasks_per_clip=args.tasks_per_clip,
        test_tasks_per_clip=args.test_tasks_per_clip,
        codebook_size=args.codebook_size,
        workers=args.workers,
    )
    splits = metadata["splits"]
    print(
        f"wrote {args.out_dir}: train {splits['train']['rows']} rows "
        f"({splits['train']['clips']} clips), test {splits['test']['rows']} rows "
        f"({splits['test']['clips']} clips) in {time.perf_counter() - start:.1f} s"
    )
    return 0
