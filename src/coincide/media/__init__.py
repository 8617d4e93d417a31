"""Media in, model inputs out.

- `frontend`: 16 kHz waveform -> log-mel windows (64 mel x 96 frames, one per second), as a numpy
  function for ingestion and a torch module for prediction and ONNX export.
- `decode`: any supported audio or video file -> `MediaFeatures` (log-mel windows, the frame at
  each window's centre, times), whole or in bounded-memory blocks; bad files raise `MediaError`.
- `audio`: decoded audio frames -> 16 kHz mono float (libswresample).
- `frames`: decoded video frames -> the 128 x 128 RGB frame shown at each window's centre.
- `mel`: the Slaney mel scale and filter bank (numpy).
- `wav`: the one WAV writer (mono 16-bit PCM, by soundfile).
"""
