// Voice for the chat page: gapless playback of the tutor's PCM frames and microphone capture
// as 16 kHz PCM frames. Protocol: docs/protocol.md (audio_start, binary frames, audio_end,
// interrupted, speech_started; played, audio_end, config).
"use strict";
import { Capture, pcm16ToFloat32 } from "/static/pcm.js";

/**
 * Plays one response's audio at a time through Web Audio.
 *
 * Each binary frame becomes an AudioBuffer scheduled right after the previous one
 * (max(currentTime, nextStartTime)), so frames that arrive in time play without gaps and a
 * late one plays as soon as it can. Every scheduled source is kept so that stop() can silence
 * them at once. When a response's audio stops, finished or cut off, onPlayed(responseId, ms)
 * reports how much of it was actually heard.
 */
export class Player {
  constructor({ onPlayed, onState }) {
    this.ctx = null;
    this.onPlayed = onPlayed;
    this.onState = onState || (() => {});
    this.current = null;
    this.nextStartTime = 0;
    // Responses whose audio must not play (interrupted before or while it arrived).
    this.dropped = new Set();
  }

  /** Use this AudioContext (created on a user gesture by the page). */
  attach(ctx) {
    this.ctx = ctx;
  }

  get playing() {
    return this.current !== null;
  }

  /** audio_start: frames that follow belong to this response. */
  begin(responseId, format) {
    if (this.current && this.current.id === responseId) return;
    if (this.current) this.stop("a new reply began");
    if (this.dropped.has(responseId)) return;
    const rate = Number(format.sample_rate);
    if (format.format !== "pcm_s16le" || Number(format.channels) !== 1 || !(rate > 0)) {
      this.onState(`Cannot play the tutor's audio: unsupported format ${format.format}, ` +
        `${format.channels} channel(s) at ${format.sample_rate} Hz.`, null);
      return;
    }
    this.current = { id: responseId, rate, sources: [], ended: false, done: false };
    this.onState("The tutor is speaking…", null);
  }

  /** A binary frame of the current response. */
  push(buffer) {
    const r = this.current;
    const ctx = this.ctx;
    if (!r || r.done || !ctx || buffer.byteLength < 2) return;
    const samples = pcm16ToFloat32(buffer);
    // The buffer keeps the announced rate; Web Audio resamples to the device's.
    const audio = ctx.createBuffer(1, samples.length, r.rate);
    audio.copyToChannel(samples, 0);
    const node = ctx.createBufferSource();
    node.buffer = audio;
    node.connect(ctx.destination);
    const at = Math.max(ctx.currentTime, this.nextStartTime);
    node.start(at);
    this.nextStartTime = at + audio.duration;
    const item = { node, at, duration: audio.duration, finished: false };
    r.sources.push(item);
    node.onended = () => {
      item.finished = true;
      this.maybeFinished(r);
    };
  }

  /** audio_end: no more frames of this response; report once the last one has played. */
  end(responseId) {
    const r = this.current;
    if (!r || r.id !== responseId) return;
    r.ended = true;
    this.maybeFinished(r);
  }

  maybeFinished(r) {
    if (r.ended && !r.done && r.sources.every((s) => s.finished)) {
      this.finish(r, this.heardMs(r), false);
    }
  }

  /** Milliseconds of the response heard so far: each source's part before currentTime. */
  heardMs(r) {
    if (!this.ctx) return 0;
    const now = this.ctx.currentTime;
    let seconds = 0;
    for (const s of r.sources) {
      seconds += s.finished ? s.duration : Math.min(s.duration, Math.max(0, now - s.at));
    }
    return seconds * 1000;
  }

  /** Silence the current response now (barge-in, interrupt, new turn). */
  stop(why) {
    const r = this.current;
    if (!r || r.done) return;
    const heard = this.heardMs(r);
    for (const s of r.sources) {
      s.node.onended = null;
      try {
        s.node.stop();
      } catch {
        // Already stopped.
      }
    }
    this.finish(r, heard, true, why);
  }

  /** interrupted: drop this response's audio, queued or still to come. */
  drop(responseId) {
    this.dropped.add(responseId);
    if (this.dropped.size > 100) this.dropped.delete(this.dropped.values().next().value);
    if (this.current && this.current.id === responseId) this.stop("the reply was interrupted");
  }

  finish(r, heardMs, cut, why) {
    r.done = true;
    if (this.current === r) this.current = null;
    this.nextStartTime = 0;
    const ms = Math.round(heardMs);
    const seconds = (ms / 1000).toFixed(1);
    this.onState(cut ? `Stopped the tutor's speech after ${seconds} s${why ? ` (${why})` : ""}.`
      : `Played ${seconds} s of the tutor's speech.`, ms);
    this.onPlayed(r.id, ms);
  }
}

/**
 * The microphone as PCM s16le mono frames at `targetRate`, through an AudioWorklet, or a
 * ScriptProcessor where AudioWorklet is missing. onFrame(arrayBuffer, last) gets each frame;
 * `last` marks the (possibly empty) rest handed over by flush().
 */
export class Mic {
  constructor({ onFrame, targetRate = 16000, frameMs = 40 }) {
    this.onFrame = onFrame;
    this.targetRate = targetRate;
    this.frameMs = frameMs;
    this.stream = null;
    this.nodes = [];
    this.flushCapture = null;
    this.kind = "";
  }

  get open() {
    return this.stream !== null;
  }

  async start(ctx) {
    if (this.stream) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser allows the microphone only on https:// pages and on localhost.");
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    try {
      const source = ctx.createMediaStreamSource(stream);
      // A node is only pulled while it leads to the destination; the muted gain keeps the
      // student's own voice out of the speakers.
      const sink = ctx.createGain();
      sink.gain.value = 0;
      sink.connect(ctx.destination);
      let node;
      if (ctx.audioWorklet && typeof AudioWorkletNode === "function") {
        if (!loadedWorklets.has(ctx)) {
          await ctx.audioWorklet.addModule("/static/mic-worklet.js");
          loadedWorklets.add(ctx);
        }
        node = new AudioWorkletNode(ctx, "pcm16-capture", {
          numberOfInputs: 1,
          numberOfOutputs: 1,
          outputChannelCount: [1],
          processorOptions: { targetRate: this.targetRate, frameMs: this.frameMs },
        });
        node.port.onmessage = (event) => this.onFrame(event.data.frame, event.data.last);
        this.flushCapture = () => node.port.postMessage("flush");
        this.kind = "AudioWorklet";
      } else {
        const capture = new Capture(ctx.sampleRate, this.targetRate, this.frameMs, this.onFrame);
        node = ctx.createScriptProcessor(4096, 1, 1);
        node.onaudioprocess = (event) => capture.process(event.inputBuffer.getChannelData(0));
        this.flushCapture = () => capture.flush();
        this.kind = "ScriptProcessor";
      }
      source.connect(node);
      node.connect(sink);
      this.nodes = [source, node, sink];
      this.stream = stream;
    } catch (err) {
      stream.getTracks().forEach((t) => t.stop());
      throw err;
    }
  }

  /** Hand over the samples not yet framed (push-to-talk release). */
  flush() {
    if (this.flushCapture) this.flushCapture();
  }

  /** Release the microphone (the browser's recording indicator goes off). */
  stop() {
    for (const node of this.nodes) node.disconnect();
    this.nodes = [];
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.flushCapture = null;
  }
}

const loadedWorklets = new WeakSet();
