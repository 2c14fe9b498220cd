"""Issue 12: what the second layer of issue12_layer2.py costs on top of layer 1's six-view pass, per flip
(order 1993's layer 1; layer 2 fitted on 2,000 first-task images, which does not change its cost).

    python experiments/issue12_layer2_timing.py
"""
import sys, time, json; sys.path.insert(0, 'experiments')
import numpy as np, torch
from issue12_layer2 import SecondLayer
from issue12_ceiling import order_stream
from memret.incremental.features import build_encoder, label_free_fit_images, batches
kw = {"n_centroids": 1600, "encoding": "soft"}
data, ytr, stream, cache = order_stream("kmeans_patches", kw, 1993)
l1, _ = build_encoder("kmeans_patches", data, stream[0], kw, 1993)
imgs = label_free_fit_images(data, stream[0], 1993)[:2000]
layer = SecondLayer(l1).fit(imgs, seed=0, n_patches=20000)
x = torch.cat(list(batches(data.train, np.arange(20000, 21024), 256)))
sh = [(0, 0), (2, 2), (-2, -2)]
with torch.inference_mode():
    for rep in range(1):
        t = time.perf_counter(); l1.forward_shifted(x, sh); a = time.perf_counter() - t
        t = time.perf_counter()
        for s in range(0, len(x), 256):
            for m in layer.shifted_maps(x[s:s + 256], sh): layer.encode_maps(m)
        b = time.perf_counter() - t
        print(json.dumps({"images": len(x), "layer1_forward_shifted_s": a, "layer2_shifted_maps_and_encode_s": b}), flush=True)
with torch.inference_mode():
    xb = x[:256]
    t = time.perf_counter(); raw = layer.shifted_maps(xb, sh, project=False); a = time.perf_counter() - t
    t = time.perf_counter(); pr = [(m - layer.mean1) @ layer.P for m in raw]; b = time.perf_counter() - t
    t = time.perf_counter(); [layer.encode_maps(m) for m in pr]; c = time.perf_counter() - t
    print(json.dumps({"images": 256, "l1_map_and_81_cell_pooling_s": a, "projection_s": b, "layer2_encode_s": c}))
