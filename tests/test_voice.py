"""Voice end to end against the real speech models (Silero VAD, Whisper tiny.en, piper joe):
speech in over the WebSocket, transcription, a reply spoken back, barge-in, bad audio.

The language model is the scripted one (its reply repeats the student's words, so what was
heard can be checked); tests/test_cli.py and test_voice_real_llm below run the real one."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import numpy as np
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import TRANSCRIBER
from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.engine.speech.pcm import resample, to_float
from tutorsrv.engine.voice_input import MAX_WAITING_UTTERANCES

from .conftest import AUTH, MakeClient, new_session, receive_json, ws_path
from .speech import (
    receive_until,
    send_pcm,
    silence,
    silent_flac,
    speech_16k,
    utterance_pcm,
    wav_bytes,
)
from .web_helpers import create_student, create_tutor, register_admin, start_session

VOICE = {"asr": {"enabled": True}, "tts": {"enabled": True}}
QUESTION = "What is the capital of France?"
LONG_REPLY = (
    "Fractions describe parts of a whole. The bottom number says how many equal parts there "
    "are, and the top number says how many of them we take. For example, three quarters "
    "means three of four equal parts. Fractions can be added when their bottoms match. "
    "Otherwise we first find a common denominator, which is a shared multiple."
)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


async def voice_client(
    make_client: MakeClient, role: str = "engine", **sections: dict
) -> TestClient:
    merged = {k: dict(v) for k, v in VOICE.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return await make_client(role, **merged)


async def open_socket(client: TestClient, **body):
    session = await new_session(client, **body)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    hello = await receive_json(ws)
    assert hello["type"] == "session"
    return ws, hello, session


async def test_session_announces_audio_formats_and_health_reports_models(
    make_client: MakeClient,
) -> None:
    client = await voice_client(make_client)
    ws, hello, _ = await open_socket(client)
    assert hello["audio"]["input"] == {"format": "pcm_s16le", "sample_rate": 16000, "channels": 1}
    assert hello["audio"]["output"] == {
        "format": "pcm_s16le",
        "sample_rate": 22050,
        "channels": 1,
        "voice": "en_US-joe-medium",
    }
    health = await (await client.get("/health")).json()
    assert health["asr"]["ready"] is True
    assert health["tts"] == {"voices": ["en_US-joe-medium"], "ready": True}
    await ws.close()


async def test_spoken_turn_is_transcribed_answered_and_spoken(make_client: MakeClient) -> None:
    client = await voice_client(make_client)
    ws, _, _ = await open_socket(client)
    await send_pcm(ws, utterance_pcm(QUESTION))
    heard = await receive_until(ws, "response_done")

    order = [m["type"] for m in heard.events()]
    assert order.index("speech_started") < order.index("transcription") < order.index("text")
    transcription = heard.events("transcription")[0]
    assert {"capital", "france"} <= words(transcription["content"])
    assert transcription["final"] is True

    start, end = heard.index("audio_start"), heard.index("audio_end")
    assert heard.index("transcription") < start < end
    announced = heard.items[start]
    assert announced["sample_rate"] == 22050 and announced["format"] == "pcm_s16le"
    frames = [m for m in heard.items[start:end] if isinstance(m, bytes)]
    assert frames and all(len(f) % 2 == 0 and len(f) <= 22050 * 2 // 10 for f in frames)
    audio = b"".join(frames)
    seconds = len(audio) / 2 / 22050
    assert heard.items[end]["audio_ms"] == round(seconds * 1000, 1)
    reply = heard.events("text")[0]["content"]
    # The scripted reply repeats the question: some 12 words, at a speaking pace.
    assert 1.5 < len(reply.split()) / seconds < 5.0
    assert not heard.audio_after(end)  # nothing after audio_end

    metrics = heard.events("response_done")[0]["metrics"]
    assert metrics["asr_ms"] > 0
    assert metrics["audio_ms"] == heard.items[end]["audio_ms"]
    assert 0 < metrics["first_audio_ms"] <= metrics["duration_ms"]
    assert metrics["speech_to_first_audio_ms"] > metrics["asr_ms"]

    # Round trip: the tutor's own speech, transcribed, says the reply's words.
    transcriber = client.server.app[TRANSCRIBER]
    tutor_said = await transcriber.transcribe(resample(to_float(audio), 22050, 16000))
    assert {"capital", "france", "scripted", "reply"} <= words(tutor_said.text)

    scrape = await (await client.get("/metrics")).text()
    assert "tutorsrv_asr_seconds_count 1.0" in scrape
    assert "tutorsrv_speech_to_first_audio_seconds_count 1.0" in scrape
    await ws.close()


async def test_greeting_is_spoken_on_connect(make_client: MakeClient) -> None:
    client = await voice_client(make_client)
    session = await new_session(client, tutor={"name": "Ada", "greeting": "Hello, I am Ada."})
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    heard = await receive_until(ws, "response_done")
    start, end = heard.index("audio_start"), heard.index("audio_end")
    assert len(heard.audio_between(start, end)) > 22050  # more than half a second of speech
    await ws.close()


async def test_push_to_talk_audio_end_ends_the_utterance_at_once(make_client: MakeClient) -> None:
    client = await voice_client(make_client)
    ws, _, _ = await open_socket(client)
    # No trailing silence: without audio_end the VAD would wait for more.
    await send_pcm(ws, utterance_pcm("Tell me about volcanoes.", tail=0.0))
    await ws.send_json({"type": "audio_end"})
    heard = await receive_until(ws, "transcription", wait=20)
    assert "volcano" in heard.events("transcription")[0]["content"].lower()
    await receive_until(ws, "response_done")

    # The VAD may end an utterance on a pause before the button is released: that release
    # is no error. A release with nothing said since the last one is.
    await send_pcm(ws, utterance_pcm("Tell me about rivers."))
    heard = await receive_until(ws, "transcription", wait=20)
    await ws.send_json({"type": "audio_end"})
    await receive_until(ws, "response_done", heard)
    assert not heard.events("error")
    await ws.send_json({"type": "audio_end"})
    assert (await receive_json(ws))["code"] == "no_speech"
    await ws.close()


async def test_whole_recording_in_an_audio_message(make_client: MakeClient) -> None:
    client = await voice_client(make_client)
    ws, _, _ = await open_socket(client)
    recording = np.concatenate([silence(0.2), speech_16k("How do plants make food?")])
    wav = wav_bytes(resample(recording, 16000, 44100), rate=44100)  # decoded and resampled
    await ws.send_json({"type": "audio", "data": base64.b64encode(wav).decode()})
    heard = await receive_until(ws, "response_done")
    assert {"plants", "food"} <= words(heard.events("transcription")[0]["content"])
    assert heard.events("audio_start")
    await ws.close()


async def test_interrupt_during_speech_stops_audio_at_once(make_client: MakeClient) -> None:
    client = await voice_client(
        make_client, llm={"scripted_text": LONG_REPLY, "scripted_token_delay_ms": 15}
    )
    ws, _, _ = await open_socket(client)
    await ws.send_json({"type": "text", "content": "Explain fractions"})
    heard = await receive_until(ws, "audio_start")
    while sum(isinstance(m, bytes) for m in heard.items) < 2:
        msg = await ws.receive(timeout=30)
        heard.items.append(msg.data if msg.type == WSMsgType.BINARY else msg.json())
    await ws.send_json({"type": "interrupt"})
    await receive_until(ws, "interrupted", heard)
    cut = len(heard.items) - 1
    assert heard.items[cut]["reason"] == "interrupt"
    # Drain: everything the server sent before answering this ping is in.
    await ws.send_json({"type": "ping"})
    await receive_until(ws, "pong", heard)
    assert heard.audio_after(cut) == []
    assert not heard.events("response_done")
    assert not heard.events("audio_end")  # the cut-off speech just stops
    await ws.close()


async def test_speech_barges_in_on_the_tutor(make_client: MakeClient) -> None:
    client = await voice_client(
        make_client, llm={"scripted_text": LONG_REPLY, "scripted_token_delay_ms": 15}
    )
    ws, _, _ = await open_socket(client)
    await ws.send_json({"type": "text", "content": "Explain fractions"})
    heard = await receive_until(ws, "audio_start")
    first_response = heard.events("audio_start")[0]["response_id"]
    await send_pcm(ws, utterance_pcm("Stop, what is a denominator?"))
    await receive_until(ws, "speech_started", heard)
    await receive_until(ws, "interrupted", heard)
    cut = len(heard.items) - 1
    assert heard.items[cut] == {
        "type": "interrupted",
        "response_id": first_response,
        "reason": "barge_in",
    }
    await receive_until(ws, "response_done", heard)
    # After `interrupted`, the only audio is the new reply's, after its own audio_start.
    next_start = heard.index("audio_start", cut)
    assert heard.items[next_start]["response_id"] != first_response
    assert heard.audio_between(cut, next_start) == b""
    assert "denominator" in heard.events("transcription")[0]["content"].lower()
    await ws.close()


async def test_played_trims_history_and_transcript_to_what_was_heard(
    make_client: MakeClient,
) -> None:
    client = await voice_client(make_client, "all", llm={"scripted_text": LONG_REPLY})
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin, greeting="")
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_until(ws, "session")
    await ws.send_json({"type": "text", "content": "Explain fractions"})
    heard = await receive_until(ws, "response_done")
    done = heard.events("response_done")[0]
    total_ms = done["metrics"]["audio_ms"]
    # The student stopped listening a third of the way in.
    await ws.send_json(
        {"type": "played", "response_id": done["response_id"], "audio_ms": total_ms / 3}
    )
    await ws.send_json({"type": "ping"})
    await receive_until(ws, "pong")

    engine_view = await (
        await client.get(f"/v1/sessions/{session['session_id']}", headers=AUTH)
    ).json()
    reply = engine_view["history"][-1]
    assert reply["interrupted"] is True
    assert LONG_REPLY.startswith(reply["content"])
    assert 0.15 < len(reply["content"]) / len(LONG_REPLY) < 0.5

    async def stored_reply() -> dict | None:
        resp = await client.get(
            f"/api/sessions/{session['session_id']}/messages", headers=admin["headers"]
        )
        replies = [m for m in (await resp.json())["messages"] if m["role"] == "assistant"]
        return replies[-1] if replies else None

    # The first revision (the whole reply) and then the trimmed one reach the database.
    stored = None
    for _ in range(200):
        stored = await stored_reply()
        if stored is not None and stored["content"] == reply["content"]:
            break
        await asyncio.sleep(0.05)
    assert stored is not None
    assert stored["content"] == reply["content"] and stored["interrupted"] is True
    assert stored["metrics"]["audio_played_ms"] == round(total_ms / 3, 1)
    await ws.close()


async def test_audio_output_off_means_text_only(make_client: MakeClient) -> None:
    client = await voice_client(make_client)
    ws, _, _ = await open_socket(client)
    await ws.send_json({"type": "config", "audio_output": False})
    await ws.send_json({"type": "text", "content": "Hello"})
    heard = await receive_until(ws, "response_done")
    assert not heard.events("audio_start") and heard.audio_after(0) == []
    assert "first_audio_ms" not in heard.events("response_done")[0]["metrics"]
    # Voice input still works with speech output off.
    await send_pcm(ws, utterance_pcm(QUESTION))
    heard = await receive_until(ws, "response_done")
    assert heard.events("transcription") and heard.audio_after(0) == []
    await ws.close()


async def test_bad_audio_gets_errors_and_the_socket_stays_open(make_client: MakeClient) -> None:
    client = await voice_client(make_client)
    ws, _, _ = await open_socket(client)

    async def error_for(send) -> dict:
        await send()
        message = await receive_json(ws)
        assert message["type"] == "error" and message["fatal"] is False, message
        return message

    odd = await error_for(lambda: ws.send_bytes(b"\x01\x02\x03"))
    assert odd["code"] == "invalid_audio" and "even number of bytes" in odd["content"]
    no_base64 = await error_for(lambda: ws.send_json({"type": "audio", "data": "%%%"}))
    assert no_base64["code"] == "invalid_audio"
    garbage = base64.b64encode(bytes(range(256)) * 40).decode()
    undecodable = await error_for(lambda: ws.send_json({"type": "audio", "data": garbage}))
    assert undecodable["code"] == "invalid_audio"
    empty = await error_for(lambda: ws.send_json({"type": "audio", "data": ""}))
    assert empty["code"] == "invalid_field"
    # Decompression bombs: tiny FLACs of silence that would decode to minutes of samples.
    low_rate = base64.b64encode(silent_flac(600, 100)).decode()
    refused = await error_for(lambda: ws.send_json({"type": "audio", "data": low_rate}))
    assert refused["code"] == "invalid_audio" and "100 Hz" in refused["content"]
    endless = base64.b64encode(silent_flac(1200, 16000, declare_length=False)).decode()
    too_long = await error_for(lambda: ws.send_json({"type": "audio", "data": endless}))
    assert too_long["code"] == "utterance_too_long" and "limit is 30 s" in too_long["content"]
    nothing = await error_for(lambda: ws.send_json({"type": "audio_end"}))
    assert nothing["code"] == "no_speech"

    # Silence and noise are not speech: no speech_started, no turn.
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(16000 * 2) * 0.05).astype(np.float32)
    await send_pcm(ws, bytes(16000 * 2 * 2))
    await send_pcm(ws, (noise * 32767).astype("<i2").tobytes())
    await ws.send_json({"type": "ping"})
    after = await receive_until(ws, "pong")
    assert [m["type"] for m in after.events()] == ["pong"]

    # The socket still takes a real turn.
    await send_pcm(ws, utterance_pcm(QUESTION))
    heard = await receive_until(ws, "response_done")
    assert heard.events("transcription")
    await ws.close()


async def test_an_endless_utterance_is_cut_and_answered(make_client: MakeClient) -> None:
    client = await voice_client(make_client, asr={"max_utterance_seconds": 2.0})
    ws, _, _ = await open_socket(client)
    rambling = "The quick brown fox jumps over the lazy dog and then runs far away into the forest."
    assert len(speech_16k(rambling)) > 16000 * 4
    await send_pcm(ws, utterance_pcm(rambling))
    heard = await receive_until(ws, "transcription")
    error = heard.events("error")[0]
    assert error["code"] == "utterance_too_long" and error["fatal"] is False
    # The first two seconds are answered; the end of the sentence was beyond the cut.
    said = words(heard.events("transcription")[0]["content"])
    assert {"quick", "brown"} <= said and "forest" not in said
    await ws.send_json({"type": "ping"})
    await receive_until(ws, "pong")
    await ws.close()


async def test_audio_far_faster_than_real_time_is_dropped(make_client: MakeClient) -> None:
    client = await voice_client(make_client, asr={"max_realtime_factor": 1.0})
    ws, _, _ = await open_socket(client)
    # 12 s of audio at once: the 10 s burst allowance is spent, the rest is refused.
    await send_pcm(ws, bytes(16000 * 2 * 12), frame_bytes=16000 * 2)
    await ws.send_json({"type": "ping"})
    heard = await receive_until(ws, "pong")
    codes = [m.get("code") for m in heard.events("error")]
    assert codes and set(codes) == {"rate_limited"}
    await ws.close()


async def test_voice_with_the_real_language_model(make_client: MakeClient) -> None:
    client = await voice_client(make_client, llm={"backend": "llamacpp", "max_tokens": 48})
    ws, _, _ = await open_socket(client)
    await send_pcm(ws, utterance_pcm("Why is the sky blue?"))
    heard = await receive_until(ws, "response_done", wait=120)
    assert {"sky", "blue"} <= words(heard.events("transcription")[0]["content"])
    start, end = heard.index("audio_start"), heard.index("audio_end")
    assert len(heard.audio_between(start, end)) > 22050
    assert heard.events("text")[0]["content"]
    await ws.close()


async def test_recordings_beyond_the_waiting_limit_are_dropped_with_an_error(
    make_client: MakeClient,
) -> None:
    """A flood of recordings (each up to 30 s of audio in memory) queues at most
    MAX_WAITING_UTTERANCES for transcription; the rest are dropped with `rate_limited`."""
    client = await voice_client(make_client, tts={"enabled": False})
    ws, _, _ = await open_socket(client)
    recording = base64.b64encode(wav_bytes(speech_16k(QUESTION))).decode()
    sent = 10
    for _ in range(sent):
        await ws.send_json({"type": "audio", "data": recording})
    heard = dropped = 0
    while heard + dropped < sent:
        msg = await ws.receive(timeout=60)
        assert msg.type == WSMsgType.TEXT, msg
        event = json.loads(msg.data)
        if event["type"] == "transcription":
            heard += 1
        elif event["type"] == "error" and "waiting to be transcribed" in event["content"]:
            assert event["code"] == "rate_limited" and not event["fatal"]
            dropped += 1
    assert dropped >= 1 and heard >= MAX_WAITING_UTTERANCES
    await ws.send_json({"type": "ping"})
    await receive_until(ws, "pong")
    await ws.close()
