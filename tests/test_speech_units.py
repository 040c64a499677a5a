"""The speech building blocks on their own: clause cutting, PCM, the utterance detector, the
words-heard arithmetic, and start-up failures of the speech models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tutorsrv.config import ASRConfig, TTSConfig
from tutorsrv.engine.speech.asr import ModelLoadError, Transcriber
from tutorsrv.engine.speech.clauses import ClauseSplitter, speakable
from tutorsrv.engine.speech.pcm import InvalidAudio, frames, resample, to_float, to_pcm
from tutorsrv.engine.speech.tts import Synthesizer
from tutorsrv.engine.speech.vad import SileroVAD, SpeechStarted, UtteranceDetector, UtteranceEnded
from tutorsrv.engine.voice_output import Speaker, SpokenClause

from .speech import silence, speech_16k
from .test_cli import run_cli


def split(text: str, pieces: int = 1, **kw: int) -> list[str]:
    splitter = ClauseSplitter(**kw)
    step = max(1, len(text) // pieces)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += splitter.feed(text[i : i + step])
    return out + splitter.flush()


def test_clauses_cut_at_sentence_ends_but_not_inside_numbers() -> None:
    text = "Pi is about 3.14 in maths. Is that clear? Yes! Good"
    assert split(text, pieces=len(text)) == [
        "Pi is about 3.14 in maths. ",
        "Is that clear? ",
        "Yes! ",
        "Good",
    ]


def test_commas_cut_only_once_the_clause_is_long_enough() -> None:
    text = (
        "Well, the first part, which is short, comes quickly, and the rest, which is long, waits."
    )
    clauses = split(text, pieces=len(text), soft_min_chars=40, first_soft_min_chars=12)
    # The first clause may be short (the student is waiting); later ones gather 40 chars.
    assert clauses[0] == "Well, the first part, "
    assert all(len(c) >= 40 for c in clauses[1:-1])
    assert "".join(clauses) == text


def test_a_run_without_punctuation_is_cut_at_a_space() -> None:
    text = " ".join(["word"] * 100)
    clauses = split(text, pieces=50, max_chars=60)
    assert all(len(c) <= 60 for c in clauses)
    assert all(c.endswith(" ") for c in clauses[:-1])
    assert "".join(clauses) == text


@given(st.text(alphabet=st.sampled_from("ab ,.!?\n3"), max_size=300), st.integers(1, 40))
def test_clauses_keep_every_character_in_order(text: str, pieces: int) -> None:
    clauses = split(text, pieces=pieces)
    joined = "".join(clauses)
    # Everything but trailing white space (nothing to say) arrives, in order.
    assert text.startswith(joined) and joined.rstrip() == text.rstrip()
    assert all(c.strip() for c in clauses)


def test_speakable_drops_markdown_and_citations() -> None:
    assert (
        speakable("**Photosynthesis** uses light [1], [2, 3].\n") == "Photosynthesis uses light , ."
    )
    assert speakable("# `code` here") == "code here"


def test_speakable_reads_lists_links_and_maths_as_words() -> None:
    """The Qwen models write lists and LaTeX whatever the prompt says; none of it is read
    out as symbols."""
    assert speakable("1. Add the tens.") == "Add the tens."
    assert speakable("- Water boils at 100 degrees.") == "Water boils at 100 degrees."
    assert speakable("See [the notes](https://example.org/a) now") == "See the notes now"
    assert speakable(r"\( 7 \times 8 = 56 \)") == "7 times 8 equals 56"
    assert speakable(r"\(\frac{3}{4}\) of 12 is 9") == "3 over 4 of 12 is 9"
    assert speakable("12 ÷ 4 = 3") == "12 divided by 4 equals 3"
    assert speakable(r"$\sqrt{16}$ is 4") == "the square root of 16 is 4"
    # Prose keeps its numbers and punctuation.
    assert speakable("Pi is about 3.14, not 3.") == "Pi is about 3.14, not 3."


def test_a_list_number_is_not_a_sentence_of_its_own() -> None:
    assert split("Steps:\n1. Add the tens. 2. Add the ones.\n") == [
        "Steps:\n",
        "1. Add the tens. ",
        "2. Add the ones.\n",
    ]


def test_speakable_is_linear_on_hostile_replies() -> None:
    """No pattern backtracks: long runs of the characters they look for stay cheap (a
    catastrophic pattern would take minutes on these; the test's own time limit fails it)."""
    for text in ("[" * 20_000, "\\frac{" * 5_000, "1." * 10_000, "[a](" * 5_000, "{" * 20_000):
        speakable(text)


def test_pcm_conversions() -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0], np.float32)
    assert np.allclose(to_float(to_pcm(samples)), samples, atol=1 / 16000)
    with pytest.raises(InvalidAudio, match="even number of bytes"):
        to_float(b"\x00\x01\x02")
    assert [len(f) for f in frames(bytes(1000), 301)] == [300, 300, 300, 100]
    assert len(resample(np.ones(22050, np.float32), 22050, 16000)) == 16000


def test_detector_finds_one_utterance_in_speech_between_silences() -> None:
    detector = UtteranceDetector(SileroVAD(), end_silence_ms=500, pad_ms=300)
    speech = speech_16k("Hello there, how are you today?")
    stream = np.concatenate([silence(1.0), speech, silence(1.0)])
    events = []
    for i in range(0, len(stream), 320):  # 20 ms frames
        events += detector.feed(stream[i : i + 320])
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]
    ended = events[1]
    assert isinstance(ended, UtteranceEnded) and ended.reason == "silence"
    # The whole speech, plus at most the padding on either side.
    assert len(speech) / 16000 - 0.1 < ended.seconds < len(speech) / 16000 + 0.8
    assert not detector.speaking


def test_detector_end_now_and_the_length_cap() -> None:
    detector = UtteranceDetector(SileroVAD(), max_seconds=1.0)
    assert detector.end_now() is None  # nothing heard
    events = detector.feed(np.concatenate([silence(0.3), speech_16k("Talking on and on and on.")]))
    assert isinstance(events[0], SpeechStarted)
    capped = [e for e in events if isinstance(e, UtteranceEnded)]
    assert capped and capped[0].reason == "too_long" and capped[0].seconds <= 1.05
    # Push-to-talk: speech in progress ends on request.
    detector = UtteranceDetector(SileroVAD())
    detector.feed(np.concatenate([silence(0.3), speech_16k("Yes please.")]))
    if detector.speaking:
        ended = detector.end_now()
        assert ended is not None and ended.reason == "audio_end"


def test_heard_text_follows_the_audio_timeline() -> None:
    speaker = Speaker.__new__(Speaker)
    speaker.clauses = [
        SpokenClause("One two three four. ", 0.0, 1000.0),
        SpokenClause("Five six seven eight. ", 1000.0, 2000.0),
        SpokenClause("Nine ten.", 2000.0, 2000.0),  # never synthesised (speech failed)
    ]
    assert speaker.heard_text(0) == ""
    assert speaker.heard_text(500) == "One two"
    assert speaker.heard_text(1000) == "One two three four."
    assert speaker.heard_text(1750) == "One two three four. Five six seven"
    assert speaker.heard_text(5000) == "One two three four. Five six seven eight. Nine ten."


async def test_missing_models_stop_loading_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tts\.voice"):
        await Synthesizer(TTSConfig(voice=str(tmp_path / "absent.onnx"))).load()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    (tmp_path / "broken.onnx.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"tts\.voice"):
        await Synthesizer(TTSConfig(voice=str(broken))).load()
    with pytest.raises(ModelLoadError, match=r"asr\.model"):
        await Transcriber(ASRConfig(model=str(tmp_path))).load()


def test_cli_exits_3_with_a_clear_message_when_a_speech_model_is_missing(tmp_path: Path) -> None:
    result = run_cli(
        ["run", "--role", "engine", "--port", "0"],
        {
            "TUTORSRV_ENGINE_API_KEY": "k" * 20,
            "TUTORSRV_LLM_BACKEND": "scripted",
            "TUTORSRV_TTS_ENABLED": "true",
            "TUTORSRV_TTS_VOICE": str(tmp_path / "nowhere.onnx"),
        },
        tmp_path,
    )
    assert result.returncode == 3
    assert "cannot start" in result.stderr and "tts.voice" in result.stderr


async def test_tts_on_cuda_needs_a_cuda_runtime() -> None:
    import onnxruntime

    synthesizer = Synthesizer(TTSConfig(use_cuda=True))
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        await synthesizer.load()  # a GPU machine with onnxruntime-gpu
        assert synthesizer.default is not None
        return
    # The CPU onnxruntime: better a clear stop than a quiet fallback to the CPU on a box
    # sized for a GPU.
    with pytest.raises(ModelLoadError, match="no CUDA provider"):
        await synthesizer.load()
