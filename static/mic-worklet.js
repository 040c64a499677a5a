// AudioWorklet processor of the chat page's microphone: 16 kHz PCM s16le frames, posted to
// the page (which sends them on the WebSocket). It runs on the audio thread, so the frames
// keep coming while the page's main thread is busy.
import { Capture } from "./pcm.js";

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, frameMs } = options.processorOptions;
    // `sampleRate` is the AudioWorkletGlobalScope's: the context's rate.
    this.capture = new Capture(sampleRate, targetRate, frameMs, (frame, last) => {
      this.port.postMessage({ frame, last }, [frame]);
    });
    this.port.onmessage = (event) => {
      if (event.data === "flush") this.capture.flush();
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.capture.process(channel);
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
