"""Self-supervised pre-training for any memret encoder: DINO, MSN, LOCA and SwAV (the SEER recipe).

    import memret.encoders as E
    from memret.pretrain import DINO, PretrainConfig, pretrain, load_images
    train, test = load_images("cifar10")
    obj = DINO(E.create("vit_tiny_cifar", dynamic_img_size=True))
    pretrain(obj, train, PretrainConfig(minutes=30), out_dir="runs/dino")
    enc = E.create("vit_tiny_cifar", checkpoint="runs/dino/checkpoint.pt")

or ``python -m memret.pretrain --objective dino --encoder vit_tiny_cifar --data cifar10 --minutes 30 --out DIR``.
Objectives own their loss, heads and views (:mod:`dino`, :mod:`msn`, :mod:`loca`, :mod:`swav`); one
narrated loop (:mod:`loop`) trains them all; :mod:`evaluate` has the k-NN and linear-probe evaluations.
"""

from memret.pretrain.data import FolderImages, FromDataset, UInt8Images, load_images
from memret.pretrain.dino import DINO, DINOHead, dino_loss, dino_views, teacher_probs, updated_center
from memret.pretrain.evaluate import extract_features, knn_accuracy, knn_classify, linear_probe
from memret.pretrain.loca import LOCA, LocaViews, loca_views, query_targets
from memret.pretrain.loop import PretrainConfig, PretrainResult, pretrain
from memret.pretrain.msn import MSN, me_max, msn_views, sharpen
from memret.pretrain.objective import Objective, ema_update
from memret.pretrain.swav import SwAV, sinkhorn, swapped_prediction, swav_views
from memret.pretrain.views import CropSpec, MultiCrop, dino_crops

# name -> (objective class, its default view maker(global_size, local_size, n_local))
OBJECTIVES = {"dino": (DINO, dino_views), "msn": (MSN, msn_views), "loca": (LOCA, loca_views),
              "swav": (SwAV, swav_views)}

__all__ = [
    "DINO", "DINOHead", "LOCA", "MSN", "OBJECTIVES", "LocaViews", "SwAV", "loca_views", "me_max", "msn_views",
    "query_targets", "sharpen", "sinkhorn", "swapped_prediction", "swav_views", "CropSpec", "FolderImages", "FromDataset", "MultiCrop", "Objective", "PretrainConfig",
    "PretrainResult", "UInt8Images", "dino_crops", "dino_loss", "ema_update", "extract_features", "knn_accuracy",
    "knn_classify", "linear_probe", "load_images", "pretrain", "teacher_probs", "updated_center",
]
