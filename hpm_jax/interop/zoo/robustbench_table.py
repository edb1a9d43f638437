"""RobustBench leaderboard models that hpm-jax has the architecture for: data only.

    from hpm_jax.interop.zoo.robustbench_table import MODELS, lookup
    entry = lookup("Carmon2019Unlabeled", "cifar10", "Linf")
    entry.arch, entry.kwargs        # "wide_resnet", {"depth": 28, "width": 10}
    entry.clean_acc, entry.robust_acc, entry.eps   # 89.69, 59.53, 8/255

One entry per (dataset, threat model, RobustBench name). Where the figures come from:

* names, architectures, normalisation constants and checkpoint ids: the model zoo of the
  `robustbench` 1.1.1 wheel (`robustbench/model_zoo/{cifar10,cifar100,imagenet}.py`, the
  `model` and `gdrive_id` of each entry, and the `mu`/`sigma` buffers or `mean`/`std`
  arguments of its model class);
* clean and AutoAttack accuracies (percent, the full test set for CIFAR, RobustBench's 5000
  images for ImageNet) and eps: the `clean_acc`, `autoattack_acc`, `external` and `eps`
  fields of `model_info/<dataset>/<threat model>/<name>.json` in github.com/RobustBench/
  robustbench at commit 78fcc9e (the JSONs are not in the wheel). `external` is a lower
  robust accuracy found by an evaluation beyond AutoAttack; the leaderboard ranks by it
  when present, and so does `robust_acc`.

Not listed: models whose architecture hpm-jax lacks (ensembles, DM PreActResNet-18,
ResNeXt/ResNeSt, per-image normalisation, CIFAR ResNet-50, transformers, timm models...).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

# Standard eps of each leaderboard (RobustBench's model_info "eps" fields).
EPS: Mapping[tuple[str, str], float] = MappingProxyType(
    {
        ("cifar10", "Linf"): 8 / 255,
        ("cifar10", "L2"): 0.5,
        ("cifar100", "Linf"): 8 / 255,
        ("imagenet", "Linf"): 4 / 255,
    }
)
NUM_CLASSES: Mapping[str, int] = MappingProxyType(
    {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
)


class RobustBenchModel(NamedTuple):
    """One leaderboard entry and how to build it with `hpm_jax.models.get_model`."""

    name: str
    dataset: str  # "cifar10", "cifar100", "imagenet" (RobustBench's directory names)
    threat_model: str  # "Linf" or "L2"
    arch: str  # a name of hpm_jax.models.registry.BACKBONES
    kwargs: Mapping[str, Any]  # backbone options, normalisation (mean/std) included
    clean_acc: float  # percent
    autoattack_acc: float  # percent, AutoAttack "standard"
    source: str  # a Google Drive file id (RobustBench's gdrive_id) or an https URL
    eps: float
    external_acc: float | None = None  # percent, a stronger non-AutoAttack evaluation
    checkpoint_key: str | None = None  # the file holds {key: state_dict, ...}
    preprocessing: str | None = None  # RobustBench's ImageNet preprocessing name

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    @property
    def robust_acc(self) -> float:
        """The leaderboard's robust accuracy (percent): `external_acc` if set, else AutoAttack."""
        return self.autoattack_acc if self.external_acc is None else self.external_acc


# Normalisation inside the model, as (mean, std), copied from the RobustBench model classes.
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Hendrycks2019UsingNet: 2x - 1
RONY = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))
AUGUSTIN = (
    (0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
    (0.24703225141799082, 0.24348516474564, 0.26158783926049628),
)
CIFAR100_LONG = (
    (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
)
CHEN_CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _norm(norm: tuple | None) -> dict[str, Any]:
    return {} if norm is None else {"mean": norm[0], "std": norm[1]}


def _wrn(depth: int, width: int, norm: tuple | None = None) -> tuple[str, dict]:
    """TRADES WideResNet (`sub_block1` copies are dropped by the converter)."""
    return "wide_resnet", {"depth": depth, "width": width, **_norm(norm)}


def _dm(depth: int, width: int, activation: str = "swish", norm: tuple = CIFAR10):
    """DeepMind WideResNet; RobustBench's `Swish` and `nn.SiLU` are the same function."""
    return "dm_wide_resnet", {
        "depth": depth,
        "width": width,
        "activation": activation,
        **_norm(norm),
    }


def _preact(norm: tuple | None = None, *, wong: bool = False) -> tuple[str, dict]:
    """PreActResNet-18; `wong`: PreActBlock without the final BN (see preact_resnet.py)."""
    layout = {"bn_before_fc": False, "out_shortcut": False} if wong else {}
    return "preact_resnet18", {**layout, **_norm(norm)}


def _r50(**kwargs: Any) -> tuple[str, dict]:
    """torchvision ResNet (ImageNet-normalised inside, as RobustBench's normalize_model)."""
    return "resnet50", kwargs


_RN18 = ("resnet18", {})


def _e(
    name: str, arch: tuple[str, dict], clean: float, autoattack: float, source: str, **extra: Any
) -> dict[str, Any]:
    return dict(
        name=name,
        arch=arch[0],
        kwargs=MappingProxyType(arch[1]),
        clean_acc=clean,
        autoattack_acc=autoattack,
        source=source,
        **extra,
    )


# RobustBench's default ImageNet preprocessing (resize to 256, centre crop 224).
_PREPROCESSING = {"imagenet": "Res256Crop224"}
_GROUPS: dict[tuple[str, str], list[dict[str, Any]]] = {}
# fmt: off
_GROUPS["cifar10", "Linf"] = [
    _e("Andriushchenko2020Understanding", _preact(wong=True), 79.84, 43.93,
       "1Uyvprd98bIyxfMjLdCZwm-NEJ-6GMVis", checkpoint_key="last"),
    _e("Carmon2019Unlabeled", _wrn(28, 10), 89.69, 59.53, "15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ"),
    _e("Sehwag2020Hydra", _wrn(28, 10), 88.98, 57.14, "1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y"),
    _e("Wang2020Improving", _wrn(28, 10), 87.50, 56.29, "1T939mU4kXYt5bbvM55aT4fLBvRhyzjiQ"),
    _e("Hendrycks2019Using", _wrn(28, 10, HALF), 87.11, 54.92, "1-DcJsYw2dNEOyF9epks2QS7r9nqBDEsw"),
    _e("Rice2020Overfitting", _wrn(34, 20, CIFAR10), 85.34, 53.42,
       "1vC_Twazji7lBjeMQvAD9uEQxi9Nx2oG-"),
    _e("Zhang2019Theoretically", _wrn(34, 10), 84.92, 53.08,
       "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_", eps=0.031),
    _e("Huang2020Self", _wrn(34, 10), 83.48, 53.34, "1nInDeIyZe2G-mJFxQJ3UoclQNomWjMgm", eps=0.031),
    _e("Wong2020Fast", _preact(CIFAR10, wong=True), 83.34, 43.21,
       "1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv"),
    _e("Zhang2019You", _wrn(34, 10), 87.20, 44.83, "1kB2qqPQ8qUNmK8VKuTOhT1X4GT46kAoA"),
    _e("Zhang2020Attacks", _wrn(34, 10), 84.52, 53.51, "1lBVvLG6JLXJgQP2gbsTxNHl6s3YAopqk"),
    _e("Wu2020Adversarial_extra", _wrn(28, 10), 88.25, 60.04, "1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp"),
    _e("Wu2020Adversarial", _wrn(34, 10), 85.36, 56.17, "13LBcgNvhFppCFG22i1xATrahFPfMgXGf"),
    _e("Gowal2020Uncovering_70_16", _dm(70, 16), 85.29, 57.20,
       "1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl", external_acc=57.14),
    _e("Gowal2020Uncovering_70_16_extra", _dm(70, 16), 91.10, 65.88,
       "1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ", external_acc=65.87),
    _e("Gowal2020Uncovering_34_20", _dm(34, 20), 85.64, 56.86,
       "1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O", external_acc=56.82),
    _e("Gowal2020Uncovering_28_10_extra", _dm(28, 10), 89.48, 62.80,
       "1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2", external_acc=62.76),
    _e("Sehwag2021Proxy", _wrn(34, 10), 86.68, 60.27, "1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm"),
    _e("Sehwag2021Proxy_R18", _RN18, 84.59, 55.54, "1-ZgoSlD_AMhtXdnUElilxVXnzK2DcHuu"),
    _e("Sitawarin2020Improving", _wrn(34, 10), 86.84, 50.72, "12teknvo6dQGSWBaGnbNFwFO3-Y8j2eB6"),
    _e("Chen2020Efficient", _wrn(34, 10, CIFAR10), 85.32, 51.12,
       "1c5EXpd3Kn_s6qQIbkLX3tTOOPC8VslHg"),
    _e("Cui2020Learnable_34_20", _wrn(34, 20), 88.70, 53.57,
       "1y7BUxPhQjNlb4w4BUlDyYJIS4w4fsGiS", eps=0.031),
    _e("Cui2020Learnable_34_10", _wrn(34, 10), 88.22, 52.86,
       "16s9pi_1QgMbFLISVvaVUiNfCzah6g2YV", eps=0.031),
    _e("Zhang2020Geometry", _wrn(28, 10), 89.36, 59.64, "1UoG1JhbAps1MdMc6PEFiZ2yVXl_Ii5Jk"),
    _e("Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm(28, 10), 87.33, 60.75,
       "1-0EChXbc6pOvx26O17av263bCeqIAz6s", external_acc=60.73),
    _e("Rebuffi2021Fixing_106_16_cutmix_ddpm", _dm(106, 16), 88.50, 64.64,
       "1-4qnkveIkeWoGdF72kpEFHETiY3y4_tF", external_acc=64.58),
    _e("Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm(70, 16), 88.54, 64.25,
       "1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi", external_acc=64.20),
    _e("Rebuffi2021Fixing_70_16_cutmix_extra", _dm(70, 16), 92.23, 66.58,
       "1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg", external_acc=66.56),
    _e("Sridhar2021Robust", _wrn(28, 10), 89.46, 59.66, "1muDMpOyRlgJ7n2rhS2NpfFGp3rzjuIu0"),
    _e("Sridhar2021Robust_34_15", _wrn(34, 15), 86.53, 60.41, "1-3ii3GX93YqIcmJ3VNsOgYA7ecdnSZ0Z"),
    _e("Rade2021Helper_extra", _dm(34, 10), 91.47, 62.83, "1GhAp-0C3ONRy9BxIe0J9vKc082vHvR7t"),
    _e("Rade2021Helper_ddpm", _dm(28, 10), 88.16, 60.97, "1AOF6LxnwgS5fCz_lVLYqs_wnUYuv6O7z"),
    _e("Addepalli2021Towards_RN18", _RN18, 80.24, 51.06, "1-1DxecXz5U_xZ54DVdE-GVm71Tiox-Ri"),
    _e("Addepalli2021Towards_WRN34", _wrn(34, 10), 85.32, 58.04,
       "1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB"),
    _e("Gowal2021Improving_70_16_ddpm_100m", _dm(70, 16), 88.74, 66.11,
       "10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4", external_acc=66.10),
    _e("Gowal2021Improving_28_10_ddpm_100m", _dm(28, 10), 87.50, 63.44,
       "12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx", external_acc=63.38),
    _e("Chen2021LTD_WRN34_10", _wrn(34, 10), 85.21, 56.94, "1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D"),
    _e("Chen2021LTD_WRN34_20", _wrn(34, 20), 86.03, 57.71, "1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm"),
    _e("Standard", _wrn(28, 10), 94.78, 0.0, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
    _e("Jia2022LAS-AT_34_10", _wrn(34, 10), 84.98, 56.26, "1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD"),
    _e("Jia2022LAS-AT_70_16", _wrn(70, 16), 85.66, 57.61, "1-4p-Gr0hjl8wq6qvvTza4x4a5Rmu-Bfr"),
    _e("Pang2022Robustness_WRN28_10", _dm(28, 10), 88.61, 61.04,
       "16ChNkterCp17BXv-xxqpfedb4u2_CjjS"),
    _e("Pang2022Robustness_WRN70_16", _dm(70, 16), 89.01, 63.35,
       "1uQZYUuUiL9BzaQUeXLhjr_RhoyFRrHe3"),
    _e("Addepalli2022Efficient_RN18", _RN18, 85.71, 52.48, "1m5vhdzIUUKhDbsZdOG9z76Eyp6f4xe_f"),
    _e("Addepalli2022Efficient_WRN_34_10", _wrn(34, 10), 88.71, 57.81,
       "1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA"),
    _e("Wang2023Better_WRN-28-10", _dm(28, 10, "silu"), 92.44, 67.31,
       "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI"),
    _e("Wang2023Better_WRN-70-16", _dm(70, 16, "silu"), 93.25, 70.69,
       "1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap"),
    _e("Xu2023Exploring_WRN-28-10", _dm(28, 10, "silu"), 93.69, 63.89,
       "1k1uJI13ft0h0dfzuEihVpBvjBXwFRH2o"),
    _e("Cui2023Decoupled_WRN-28-10", _dm(28, 10, "silu"), 92.16, 67.73,
       "1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2"),
    _e("Cui2023Decoupled_WRN-34-10", _wrn(34, 10), 85.31, 57.09,
       "1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN"),
    _e("Chen2024Data_WRN_34_10", _wrn(34, 10), 86.54, 57.30, "1-AzyMQaoUuwxec6O_Yri5OVtVqnNgR4R"),
    _e("Chen2024Data_WRN_34_20", _wrn(34, 20), 86.10, 58.09, "1-IbKAGtp79tAEm59N0i8QMvMZ3nxSD2-"),
    _e("Bartoldson2024Adversarial_WRN-94-16", _dm(94, 16, "silu"), 93.68, 73.71,
       "1g6o9H1b6vjoBi1USdCBt64C8B8LPiioX"),
    _e("Bartoldson2024Adversarial_WRN-82-8", _dm(82, 8, "silu"), 93.11, 71.59,
       "1--jl8qJh624SFqFffvg1IkYR-fZGA2Sr"),
]
_GROUPS["cifar10", "L2"] = [
    _e("Rice2020Overfitting", _preact(CIFAR10), 88.67, 67.68, "1jo-31utiYNBVzLM0NxUEWz0teo3Z0xa7"),
    _e("Rony2019Decoupling", _wrn(28, 10, RONY), 89.05, 66.44, "1Oua2ZYSxNvoDrtlY9vTtRzyBWHziE4Uy"),
    _e("Standard", _wrn(28, 10), 94.78, 0.0, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
    _e("Wu2020Adversarial", _wrn(34, 10), 88.51, 73.66, "1M5AZ0EZQt7d2AlTmsnqZcfx91-x7YEAV"),
    _e("Gowal2020Uncovering", _dm(70, 16), 90.90, 74.50, "1QL4SNvYydjIg1uI3VP9SyNt-2kTXRisG"),
    _e("Gowal2020Uncovering_extra", _dm(70, 16), 94.74, 80.53, "1pkZDCpCBShpAnx92n8PUeNOY1fSiTi0s"),
    _e("Sehwag2021Proxy", _wrn(34, 10), 90.93, 77.24, "1UviikNzpltVFsgMuqQ8YhpmvGczGRS4S"),
    _e("Sehwag2021Proxy_R18", _RN18, 89.76, 74.41, "1zPjjZj9wujBNkAmHHHIikem6_aIjMhXG"),
    _e("Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm(70, 16), 92.41, 80.42,
       "1-8ECIOYF4JB0ywxJOmhkefnv4TW-KuXp"),
    _e("Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm(28, 10), 91.79, 78.80,
       "1-DUKcvfDzeWwt0NK7q2XvU-dIi8up8B0"),
    _e("Rebuffi2021Fixing_70_16_cutmix_extra", _dm(70, 16), 95.74, 82.32,
       "1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708"),
    _e("Augustin2020Adversarial_34_10", _wrn(34, 10, AUGUSTIN), 92.23, 76.25,
       "1qPsKS546mKcs71IEhzOS-kLpQFSFhaKL"),
    _e("Augustin2020Adversarial_34_10_extra", _wrn(34, 10, AUGUSTIN), 93.96, 78.79,
       "1--1MFZja6C2iVWi9MgetYjnSIenRBLT-"),
    _e("Wang2023Better_WRN-28-10", _dm(28, 10, "silu"), 95.16, 83.68,
       "1-fwKiJXEqHHUngt8wKsNnHuD4vAPvPXC"),
    _e("Wang2023Better_WRN-70-16", _dm(70, 16, "silu"), 95.54, 84.97,
       "101UyURyte05tJLA9VFRBN6UDLyn-0sJw"),
]
_GROUPS["cifar100", "Linf"] = [
    _e("Gowal2020Uncovering", _dm(70, 16, norm=CIFAR100), 60.86, 30.03,
       "16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3"),
    _e("Gowal2020Uncovering_extra", _dm(70, 16, norm=CIFAR100), 69.15, 36.88,
       "1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn"),
    _e("Cui2020Learnable_34_20_LBGAT6", _wrn(34, 20), 62.55, 30.20,
       "1rN76st8q_32j6Uo8DI5XhcC2cwVhXBwK"),
    _e("Cui2020Learnable_34_10_LBGAT0", _wrn(34, 10), 70.25, 27.16,
       "1RnWbGxN-A-ltsfOvulr68U6i2L8ohAJi"),
    _e("Cui2020Learnable_34_10_LBGAT6", _wrn(34, 10), 60.64, 29.33,
       "1TfIgvW3BAkL8jL9J7AAWFSLW3SSzJ2AE"),
    _e("Chen2020Efficient", _wrn(34, 10, CHEN_CIFAR100), 62.15, 26.94,
       "1JEh95fvsfKireoELoVCBxOi12IPGFDUT"),
    _e("Wu2020Adversarial", _wrn(34, 10, CIFAR100_LONG), 60.38, 28.86,
       "1yWGvHmrgjtd9vOpV5zVDqZmeGhCgVYq7"),
    _e("Sehwag2021Proxy", _wrn(34, 10), 65.93, 31.15, "1ejMNF2O4xkSdrjtZt2UXUeim-y9F7Req"),
    _e("Sitawarin2020Improving", _wrn(34, 10), 62.82, 24.57, "1hbpwans776KM1SMbOxISkDx0KR0DW8EN"),
    _e("Hendrycks2019Using", _wrn(28, 10, HALF), 59.23, 28.42, "1If3tppQsCe5dN8Vbo9ff0tjlKQTTrShd"),
    _e("Rice2020Overfitting", _preact(CIFAR100_LONG), 53.83, 18.95,
       "1XXNZn3fZBOkD1aqNL1cvcD8zZDccyAZ6"),
    _e("Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm(70, 16, norm=CIFAR100), 63.56, 34.64,
       "1-GkVLo9QaRjCJl-by67xda1ySVhYxsLV"),
    _e("Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm(28, 10, norm=CIFAR100), 62.41, 32.06,
       "1-P7cs82Tj6UVx7Coin3tVurVKYwXWA9p"),
    _e("Addepalli2021Towards_PARN18", _preact(), 62.02, 27.14, "1-FwVya1sDvdFXr0_ZBoXEJW9ukGC7hPK"),
    _e("Addepalli2021Towards_WRN34", _wrn(34, 10), 65.73, 30.35,
       "1-9GAld_105-jWBLXL73btmfOCwAqvz7Y"),
    _e("Chen2021LTD_WRN34_10", _wrn(34, 10), 64.07, 30.59, "1-I4NZyULdEWH46b4EaCTxuuRo4eFXsg_"),
    _e("Pang2022Robustness_WRN28_10", _dm(28, 10, norm=CIFAR100), 63.66, 31.08,
       "1VDDM_j5M4b6sZpt1Nnhkr8FER3kjE33M"),
    _e("Pang2022Robustness_WRN70_16", _dm(70, 16, norm=CIFAR100), 65.56, 33.05,
       "1F3kn8KIdBVls8QuTWc3BbB83htkQeVQD"),
    _e("Jia2022LAS-AT_34_10", _wrn(34, 10), 64.89, 30.77, "1-338K2PUf5FTwk4cbUUeTNz247GrXaMG"),
    _e("Jia2022LAS-AT_34_20", _wrn(34, 20), 67.31, 31.91, "1WhRq01Yl1v8O3skkrGUBuySlptidc5a6"),
    _e("Addepalli2022Efficient_RN18", _RN18, 65.45, 27.67, "1-2hnxC7lZOQDqQbum4yPbtRtTND86I5N"),
    _e("Addepalli2022Efficient_WRN_34_10", _wrn(34, 10), 68.75, 31.85,
       "1-3c-iniqNfiwGoGPHC3nSostnG6J9fDt"),
    _e("Cui2020Learnable_34_10_LBGAT9_eps_8_255", _wrn(34, 10), 62.99, 31.20,
       "1TrUAN9opXBQa24WCTVtQTY-RkXK_3dmA"),
    _e("Wang2023Better_WRN-28-10", _dm(28, 10, "silu", CIFAR100), 72.58, 38.83,
       "1-jOu3wKWyw0XnBCXDGR32xn8Bw9GTJgh", external_acc=38.77),
    _e("Wang2023Better_WRN-70-16", _dm(70, 16, "silu", CIFAR100), 75.22, 42.67,
       "1-yYcT73GP13c0y9HrgtpyB3NAfkGKgjY", external_acc=42.66),
    _e("Cui2023Decoupled_WRN-28-10", _dm(28, 10, "silu", CIFAR100), 73.85, 39.18,
       "15BwWdWbNfoarTEWWugicOVkTjh3nXH36"),
    _e("Cui2023Decoupled_WRN-34-10", _wrn(34, 10), 65.76, 31.91,
       "1whziIioVu5SGI1fBKyc331IfG_1MgenN"),
    _e("Cui2023Decoupled_WRN-34-10_autoaug", _wrn(34, 10), 65.93, 32.52,
       "18hjcLa1V3JTNUOshafLvw1ncxL2gu50M"),
    _e("Chen2024Data_WRN_34_10", _wrn(34, 10), 64.32, 31.13, "1-N5a0Z9o-8-oIrF4_EaVFVOOPI5-D-H2"),
]
_GROUPS["imagenet", "Linf"] = [
    _e("Wong2020Fast", _r50(image_size=288), 55.62, 26.24, "1deM2ZNS5tf3S_-eRURJi-IlvUL8WJQ_w",
       preprocessing="Crop288"),
    _e("Engstrom2019Robustness", _r50(), 62.56, 29.22, "1T2Fvi1eCJTeAOEzrH_4TAIwO8HTOYVyn"),
    _e("Salman2020Do_R50", _r50(), 64.02, 34.96, "1TmT5oGa1UvVjM3d-XeSj_XmKqBNRUg8r"),
    _e("Salman2020Do_R18", _r50(stage_sizes=[2, 2, 2, 2], bottleneck=False), 52.92, 25.32,
       "1OThCOQCOxY6lAgxZxgiK3YuZDD7PPfPx"),
    _e("Salman2020Do_50_2", _r50(width_per_group=128), 68.46, 38.14,
       "1OT7xaQYljrTr3vGbM37xK9SPoPJvbSKB"),
    # RobustBench builds it with torchvision's resnet50(pretrained=True): these weights.
    _e("Standard_R50", _r50(), 76.52, 0.0,
       "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    _e("Chen2024Data_WRN_50_2", _r50(width_per_group=128, mean=None, std=None), 68.76, 40.60,
       "1-PBlZVILAKFQ7mF8srKjdkTKJZAr61Uf"),
]
# fmt: on

MODELS: Mapping[tuple[str, str, str], RobustBenchModel] = MappingProxyType(
    {
        (dataset, threat, row["name"]): RobustBenchModel(
            dataset=dataset,
            threat_model=threat,
            **{"eps": EPS[dataset, threat], "preprocessing": _PREPROCESSING.get(dataset), **row},
        )
        for (dataset, threat), rows in _GROUPS.items()
        for row in rows
    }
)


def lookup(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> RobustBenchModel:
    """The entry for a RobustBench name, or a ValueError listing close names."""
    key = (dataset, threat_model, name)
    if key in MODELS:
        return MODELS[key]
    import difflib

    boards = sorted({(d, t) for d, t, _ in MODELS})
    if (dataset, threat_model) not in boards:
        raise ValueError(
            f"No RobustBench leaderboard {dataset}/{threat_model} here; choose one of "
            f"{[f'{d}/{t}' for d, t in boards]}."
        )
    names = [n for d, t, n in MODELS if (d, t) == (dataset, threat_model)]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    elsewhere = [f"{d}/{t}" for d, t, n in MODELS if n == name]
    raise ValueError(
        f"{name!r} is not in hpm-jax's table of {dataset}/{threat_model} RobustBench models "
        "(hpm_jax.interop.zoo.robustbench_table lists those whose architecture hpm-jax has)."
        + (f" It is listed for {elsewhere}." if elsewhere else "")
        + (f" Close names: {close}." if close else "")
    )
