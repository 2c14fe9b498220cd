"""Issue 12: what the second layer of issue12_layer2.py costs on top of layer 1's six-view pass, per flip
(order 1993's layer 1; layer 2 fitted on 2,000 first-task images, which does not change its cost).

    python experiments/issue12_layer2_timing.py

Prints JSON lines: layer 1's ``forward_shifted`` against layer 2's path (which recomputes layer 1's map) on
1,024 training images and one flip's three translated views, then layer 2's path split into its steps on 256.

    python experiments/issue12_layer2_timing.py --library

times the library's layer 2 instead (``kmeans_patches`` with ``layers=2``, made inside layer 1's pass): its
``forward_shifted`` against the one-layer encoder's with the same layer 1, on the same 1,024 images and views,
three times each, alternating.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch


KW = {"n_centroids": 1600, "encoding": "soft"}  # run()'s layer 1


def _inputs():
    """``(data, stream, fit images, timed images, shifts)``: order 1993, 2,000 of the first task's fit images,
    1,024 training images and one flip's views of run()'s shift_views=2."""
    from issue12_ceiling import order_stream
    from memret.incremental.features import batches, label_free_fit_images
    from memret.incremental.views import _view_axes

    data, _, stream, _ = order_stream("kmeans_patches", KW, 1993)
    imgs = label_free_fit_images(data, stream[0], 1993)[:2000]
    x = torch.cat(list(batches(data.train, np.arange(20000, 21024), 256)))
    return data, stream, imgs, x, _view_axes(False, 2)[1]


def library() -> None:
    import memret.encoders as E

    _, _, imgs, x, shifts = _inputs()
    t = time.perf_counter()
    # 10.14's layer 2 of 800 centroids, the default then
    both = E.create("kmeans_patches", layers=2, l2_centroids=800, **KW).fit(imgs, seed=0, n_patches=20000)
    fit_s = time.perf_counter() - t
    one = E.create("kmeans_patches", **KW)
    one.load_state_dict({k: v for k, v in both.state_dict().items() if not k.startswith(("l2_", "feat_"))},
                        strict=False)
    one.feat_mean, one.feat_std = both.feat_mean[:one.embed_dim].clone(), both.feat_std[:one.embed_dim].clone()
    with torch.inference_mode():
        a = one.forward_shifted(x[:8], shifts)
        b = both.forward_shifted(x[:8], shifts)
        same = max(float((u - v[:, :one.embed_dim]).abs().max()) for u, v in zip(a, b))
        for rep in range(3):
            t = time.perf_counter()
            one.forward_shifted(x, shifts)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            both.forward_shifted(x, shifts)
            t2 = time.perf_counter() - t
            print(json.dumps({"images": len(x), "views": len(shifts), "layer1_s": t1, "both_layers_s": t2,
                              "ratio": t2 / t1, "layer2_fit_2000_images_s": fit_s, "layer1_block_max_diff": same}),
                  flush=True)


def main() -> None:
    import sys

    if "--library" in sys.argv[1:]:
        return library()
    from issue12_layer2 import SecondLayer
    from memret.incremental.features import build_encoder

    data, stream, imgs, x, shifts = _inputs()
    l1, _ = build_encoder("kmeans_patches", data, stream[0], KW, 1993)
    layer = SecondLayer(l1).fit(imgs, seed=0, n_patches=20000)
    with torch.inference_mode():
        t = time.perf_counter()
        l1.forward_shifted(x, shifts)
        a = time.perf_counter() - t
        t = time.perf_counter()
        for s in range(0, len(x), 256):
            for m in layer.shifted_maps(x[s:s + 256], shifts):
                layer.encode_maps(m)
        b = time.perf_counter() - t
        print(json.dumps({"images": len(x), "layer1_forward_shifted_s": a, "layer2_shifted_maps_and_encode_s": b}),
              flush=True)
        xb = x[:256]
        t = time.perf_counter()
        raw = layer.shifted_maps(xb, shifts, project=False)
        a = time.perf_counter() - t
        t = time.perf_counter()
        pr = [(m - layer.mean1) @ layer.P for m in raw]
        b = time.perf_counter() - t
        t = time.perf_counter()
        for m in pr:
            layer.encode_maps(m)
        c = time.perf_counter() - t
        print(json.dumps({"images": 256, "l1_map_and_81_cell_pooling_s": a, "projection_s": b, "layer2_encode_s": c}))


if __name__ == "__main__":
    main()
