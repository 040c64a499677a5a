// PCM helpers shared by the chat page and the microphone worklet (no DOM, no globals), so
// the AudioWorklet and the ScriptProcessor fallback cut identical frames.
"use strict";

/** PCM s16le bytes (one WebSocket binary frame) to Float32 samples in [-1, 1). */
export function pcm16ToFloat32(buffer) {
  const view = new DataView(buffer);
  const out = new Float32Array(buffer.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

/**
 * Microphone samples at the audio context's rate in, Int16 little-endian frames of
 * `frameMs` at `outRate` out.
 *
 * Resampling averages the input samples that fall in each output sample's span: a box filter
 * is a crude low-pass, but enough to keep speech above 8 kHz from folding back into the band
 * a speech recogniser listens to, and cheap enough for the audio thread.
 */
export class Capture {
  constructor(inRate, outRate, frameMs, onFrame) {
    this.step = inRate / outRate; // input samples per output sample
    this.frameSamples = Math.round((outRate * frameMs) / 1000);
    this.onFrame = onFrame;
    this.need = this.step; // input samples still to take for the current output sample
    this.sum = 0;
    this.count = 0;
    this.newFrame();
  }

  newFrame() {
    this.frame = new ArrayBuffer(this.frameSamples * 2);
    this.view = new DataView(this.frame);
    this.filled = 0;
  }

  process(input) {
    for (let i = 0; i < input.length; i++) {
      this.sum += input[i];
      this.count += 1;
      this.need -= 1;
      // More than one output per input sample only when the context runs below outRate.
      while (this.need <= 0) {
        this.emit(this.sum / this.count);
        this.need += this.step;
        if (this.need > 0) {
          this.sum = 0;
          this.count = 0;
        }
      }
    }
  }

  emit(sample) {
    const s = Math.max(-1, Math.min(1, sample));
    // Explicitly little-endian, whatever the machine's byte order.
    this.view.setInt16(this.filled * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    this.filled += 1;
    if (this.filled === this.frameSamples) {
      const full = this.frame;
      this.newFrame();
      this.onFrame(full, false);
    }
  }

  /** Hand over what is buffered (possibly nothing) as the last frame of an utterance. */
  flush() {
    const rest = this.frame.slice(0, this.filled * 2);
    this.newFrame();
    this.onFrame(rest, true);
  }
}
