"""Small real media for tests: a PIL image, a waveform, an mp4 file (written with PyAV)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def image(color="red", size=64, shape="circle") -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    return img


def waveform(seconds=1.0, sr=22050, freq=440.0, channels=2) -> tuple[torch.Tensor, int]:
    t = torch.arange(int(seconds * sr)) / sr
    w = 0.5 * torch.sin(2 * torch.pi * freq * t)
    return w.repeat(channels, 1), sr                     # [C, N]


def mp4(path, frames=8, size=64, fps=4) -> str:
    import av
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        for i in range(frames):
            arr = np.full((size, size, 3), 255, np.uint8)
            x = 4 + i * (size - 20) // max(frames - 1, 1)
            arr[size // 2 - 8:size // 2 + 8, x:x + 16] = (255, 0, 0)
            for pkt in st.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return str(path)


def write_parquet(path, rows: list[dict]) -> None:
    """Rows (dicts) as one parquet file, its folder made (local copies of HF-hub data sets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
