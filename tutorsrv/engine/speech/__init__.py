"""Speech services, kept apart from the WebSocket transport (see voice_input / voice_output).

- ``pcm``: the one audio format on the wire (PCM s16le mono) and conversions to float.
- ``vad``: Silero voice activity, run frame by frame with its recurrent state.
- ``asr``: faster-whisper transcription.
- ``tts``: piper synthesis and the voices it can speak with.
- ``clauses``: cutting a token stream into clauses worth synthesising on their own.

The models are loaded once per process at start-up (``app._speech_ctx``) and every call into
them runs in a worker thread.
"""
