// AudioWorklet: the microphone's samples, downmixed to mono and converted to PCM16 in
// chunks of `chunk` frames (default 2048: 43 ms at 48 kHz), posted to the page as
// transferable ArrayBuffers. The page sends them to /v1/stream as they are, at the
// AudioContext's rate, which it declares in the stream's start message.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.size = opts.chunk || 2048;
    this.buf = new Int16Array(this.size);
    this.n = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const channels = input.length;
      const frames = input[0].length;
      for (let i = 0; i < frames; i++) {
        let v = 0;
        for (let c = 0; c < channels; c++) v += input[c][i];
        v /= channels;
        v = v < -1 ? -1 : v > 1 ? 1 : v;
        this.buf[this.n++] = Math.round(v * 32767);
        if (this.n === this.size) {
          this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
          this.buf = new Int16Array(this.size);
          this.n = 0;
        }
      }
    }
    return true;  // keep running while the microphone is open
  }
}

registerProcessor("emotech-capture", CaptureProcessor);
