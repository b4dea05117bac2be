"""Scores decoded WAV files against a reference with ITU-T P.862 PESQ (wideband mode), one
JSON line per file. Used by scripts/bench-codec; needs the `pesq`, `numpy`, `scipy` and
`soundfile` packages (bench-codec installs them into a virtualenv).

    python pesq-score.py REFERENCE.wav DIR_OF_DECODED_WAVS
"""
import glob
import json
import sys

import numpy as np
import soundfile as sf
from pesq import pesq
from scipy.signal import resample_poly


def mono_16k(path):
    samples, rate = sf.read(path)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return resample_poly(samples, 16000, rate)


def main():
    reference = mono_16k(sys.argv[1])
    for path in sorted(glob.glob(sys.argv[2] + "/*.wav")):
        degraded = mono_16k(path)
        n = min(len(reference), len(degraded))
        # PESQ finds and removes the codec's fixed delay itself.
        score = pesq(16000, reference[:n], degraded[:n], "wb")
        print(json.dumps({"file": path.rsplit("/", 1)[-1], "pesq_wb": round(float(score), 3)}))


if __name__ == "__main__":
    main()
