"""Faster eval-mode arithmetic for musicnn's front end (`musicnn_tf`, conv_algorithm
"fast"): the same convolutions, followed by the max over frequency, computed with fewer
multiply-adds or less memory traffic. Only rounding differs from the direct convolution
(docs/FIDELITY.md gives the measured differences; `conv_algorithm="direct"` keeps the
literal conv).

- Timbral convs (one input channel, kernel [7 frames, 38 or 67 bands], 'valid' in
  frequency): a Fourier "minimal filtering" along time. Time is cut into tiles of m
  outputs (n = m + 6 input frames); along each tile the correlation with the kernel's 7
  taps is a circular one of length n, so it is exactly the inverse real DFT of a product
  of real DFTs. Each complex product costs 3 real ones (Gauss), so a tile needs
  P = 1.5 n - 1 products instead of 7 m; each product is a GEMM over the kernel's
  frequency taps ([tiles, bands] x [bands, filters]), and the inverse DFT of the m
  outputs is one more small GEMM. The DFT matrices are orthogonal (well conditioned), so
  float32 rounding stays at the 1e-7-relative level of a direct sum (unlike Winograd's
  real interpolation points). 2.4-2.8x fewer multiply-adds for these kernels.
- Temporal convs (kernel [L frames, 1 band]): the same multiply-adds as the conv, as
  one GEMM-shaped 1x1 convolution per window over rows of L + 7 frames of one band
  against 8 shifted copies of the filters (see TemporalConvMax), reduced over bands
  while the window's output is in cache: the [filters, time, bands] output of all
  windows is never written out. 3x faster than the direct conv here.
"""

from __future__ import annotations

import math

import torch

_FLOAT64 = torch.float64


def fourier_tile_transforms(n: int, taps: int) -> tuple[torch.Tensor, ...]:
    """(input transform [P, n], kernel transform [P, taps], output transform [m, P]),
    m = n - taps + 1, such that for d of length n and g of length taps,
    out @ ((kernel_t @ g) * (input_t @ d)) is the correlation y[t] = sum_k d[t+k] g[k],
    t < m (circular correlation of length n: the first m outputs do not wrap), in
    float64. Real DFT bins 0 and n/2 are real (one product each); the others are
    complex, multiplied with Gauss's 3 real products k1 = p(a+b), k2 = a(q-p),
    k3 = b(p+q) for (a+ib)(p+iq): real part k1 - k3, imaginary part k1 + k2."""
    m = n - taps + 1
    frames, lags, outs = (torch.arange(k, dtype=_FLOAT64) for k in (n, taps, m))
    input_rows, kernel_rows, output_cols = [], [], []
    for w in range(n // 2 + 1):
        phase = 2 * math.pi * w / n
        a, b = torch.cos(phase * frames), -torch.sin(phase * frames)  # D = sum d e^-i..
        p, q = torch.cos(phase * lags), torch.sin(phase * lags)  # conj(G)
        cos_t, sin_t = torch.cos(phase * outs), torch.sin(phase * outs)
        if w == 0 or 2 * w == n:  # a real bin, counted once in the inverse DFT
            input_rows.append(a)
            kernel_rows.append(p)
            output_cols.append(cos_t / n)
            continue
        input_rows += [a + b, a, b]
        kernel_rows += [p, q - p, p + q]
        # y[t] += (2/n) (Re cos - Im sin), Re = k1 - k3, Im = k1 + k2
        output_cols += [2 * (cos_t - sin_t) / n, -2 * sin_t / n, -2 * cos_t / n]
    return torch.stack(input_rows), torch.stack(kernel_rows), torch.stack(output_cols, 1)


class TimbralFourierConv:
    """max over frequency of a single-input-channel conv [C, 1, taps, bands], 'same'
    padded (before, after) in time and 'valid' in frequency, by Fourier tiles along time
    (see the module docstring). Built from the (sign-folded) weight once; call it on the
    unpadded input [B, T, F] to get [B, C, T] = max over the F - bands + 1 outputs."""

    def __init__(self, weight: torch.Tensor, padding: tuple[int, int], tile: int = 20):
        channels, _, taps, bands = weight.shape
        input_t, kernel_t, output_t = fourier_tile_transforms(tile, taps)
        self.padding, self.n, self.m, self.bands = padding, tile, tile - taps + 1, bands
        like = {"device": weight.device, "dtype": weight.dtype}
        self.input_t = input_t.to(**like)
        self.output_t = output_t.to(**like).contiguous()
        # [P, bands, C]: each product's GEMM operand, transformed in float64
        w = weight[:, 0].to(device="cpu", dtype=_FLOAT64)  # [C, taps, bands]
        self.kernel = torch.einsum("pk,ckj->pjc", kernel_t, w).to(**like).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, freq = x.shape
        n, m, bands = self.n, self.m, self.bands
        tiles = -(-frames // m)
        before = self.padding[0]
        padded = torch.nn.functional.pad(x, (0, 0, before, tiles * m + n - m - before - frames))
        windows = padded.as_strided(
            (batch, tiles, n, freq), (padded.shape[1] * freq, m * freq, freq, 1)
        )
        products = self.input_t.shape[0]
        rows = batch * tiles
        spectra = torch.matmul(self.input_t, windows)  # [B, tiles, P, F]
        spectra = spectra.permute(2, 0, 1, 3).reshape(products, rows, freq)
        channels = self.kernel.shape[2]
        # Buffers reused across bands: a fresh multi-MB tensor per GEMM costs page faults.
        product = x.new_empty(products, rows, channels)
        best, out = x.new_empty(m, rows * channels), x.new_empty(m, rows * channels)
        for f in range(freq - bands + 1):
            torch.bmm(spectra[:, :, f : f + bands], self.kernel, out=product)
            flat = product.view(products, rows * channels)
            if f == 0:
                torch.mm(self.output_t, flat, out=best)
            else:
                torch.maximum(best, torch.mm(self.output_t, flat, out=out), out=best)
        # [m, B, tiles, C] -> [B, C, tiles * m] -> the first `frames`
        best = best.view(m, batch, tiles, channels).permute(1, 3, 2, 0)
        return best.reshape(batch, channels, tiles * m)[:, :, :frames]


class TemporalConvMax:
    """max over frequency of the conv of x [B, T, F] with weight [C, L] along time
    ('same' padded (before, after)), as [B, C, T], built from the (sign-folded) weight
    once. `block` consecutive frames share one banded weight [block * C, L + block - 1]
    (filter j shifted by j taps; the zero taps add exact zeros), so each input row of
    L + block - 1 frames of one band gives `block` frames of all filters: a 1x1
    convolution over those rows, which oneDNN runs with its AVX-512 GEMM kernels (MKL's
    sgemm is about half as fast on this AMD CPU). One window at a time, so that the
    [blocks, bands, block * C] output stays in cache for the max over bands."""

    def __init__(self, weight: torch.Tensor, padding: tuple[int, int], block: int = 8):
        channels, taps = weight.shape
        banded = weight.new_zeros(block, channels, taps + block - 1)
        for j in range(block):
            banded[j, :, j : j + taps] = weight
        rows = banded.view(block * channels, taps + block - 1, 1, 1)
        self.weight = rows.contiguous(memory_format=torch.channels_last)
        self.padding, self.block, self.channels = padding, block, channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.window(part) for part in x.split(1)])

    def window(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, freq = x.shape
        block, channels, span = self.block, self.channels, self.weight.shape[1]
        blocks = -(-frames // block)
        before, after = self.padding
        band_major = torch.nn.functional.pad(
            x.transpose(1, 2), (before, after + blocks * block - frames)
        ).contiguous()  # [B, F, padded frames]
        # rows[k, (b, f), i] = frame k * block + i of band f: overlapping views, copied
        rows = band_major.as_strided(
            (blocks, batch * freq, span), (block, band_major.shape[2], 1)
        ).contiguous()
        z = torch.nn.functional.conv2d(
            rows.view(blocks, batch * freq, 1, span).permute(0, 3, 1, 2), self.weight
        )  # channels-last: memory [blocks, B * F, block * C]
        z = z.permute(0, 2, 3, 1).reshape(blocks, batch, freq, block, channels)
        best = z.amax(dim=2)  # [blocks, B, block, C]
        return best.permute(1, 3, 0, 2).reshape(batch, channels, blocks * block)[..., :frames]
