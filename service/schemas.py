"""Request and response bodies: the API contract as pydantic models, and nothing else.

The arrays in them are documented here but parsed by ``arrays`` (one numpy call, shaped by the
model's manifest); pydantic validates only the few options around them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**63 - 1

Image = list[float] | list[list[float]] | list[list[list[float]]] | str
IMAGES_DOC = (
    "images of the model's image_shape [H, W, C] with values in [0, 1]: H rows of W numbers (grayscale), "
    "H×W×C nested lists, or H·W·C flat numbers; or base64 PNGs of the model's size in any mode"
)
IMAGES_OUT_DOC = "mean images E[x|z]: (N, H, W) floats for grayscale models, (N, H, W, 3) for colour; or base64 PNGs"
_EXAMPLE_IMAGE = [0.0] * 300 + [1.0] * 184 + [0.0] * 300  # one 28×28 image of the shipped models


class _Options(BaseModel):
    """What a request says besides its array: a JSON body's other fields, or an NPY request's query."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="model name (default: the configured default model)")


class _ImageOptions(_Options):
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="seed for ε, the noise of z = μ + σ⊙ε")


class EncodeOptions(_ImageOptions):
    samples: int = Field(0, ge=0, description="also draw this many z ~ q(z|x) per input")


class EncodeRequest(EncodeOptions):
    inputs: list[Image] = Field(..., min_length=1, description=IMAGES_DOC)
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": [_EXAMPLE_IMAGE], "samples": 2, "seed": 0}]})


class DecodeOptions(_Options):
    format: Literal["array", "png"] = Field("array", description="nested floats, or base64 PNG strings (JSON only)")


class DecodeRequest(DecodeOptions):
    latents: list[list[float]] = Field(..., min_length=1, description="latent vectors of the model's latent_dim")
    model_config = ConfigDict(json_schema_extra={"examples": [{"latents": [[0.0] * 32], "format": "png"}]})


class SampleRequest(_Options):
    n: int = Field(1, ge=1, description="how many samples from the prior")
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="same seed, bit-identical output; omitted: one is picked and returned"
    )
    temperature: float = Field(1.0, gt=0, le=100, description="scales the prior's standard deviation")
    format: Literal["array", "png"] = Field("array", description="nested floats, or base64 PNG strings (JSON only)")
    model_config = ConfigDict(json_schema_extra={"examples": [{"n": 4, "seed": 42, "temperature": 1.0}]})


class ElboOptions(_ImageOptions):
    """Binarize inputs yourself for a Bernoulli model: the service scores the values it is given."""

    samples: int = Field(1, ge=1, description="K importance samples for log p(x) (K = 1: log_likelihood == elbo)")


class ElboRequest(ElboOptions):
    inputs: list[Image] = Field(..., min_length=1, description=IMAGES_DOC)
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": [_EXAMPLE_IMAGE], "samples": 100, "seed": 0}]})


class EncodeResponse(BaseModel):
    model: str
    mean: list[list[float]]
    log_var: list[list[float]]
    z: list[list[list[float]]] | None = Field(None, description="(inputs, samples, latent_dim), when samples ≥ 1")


class ImagesResponse(BaseModel):
    model: str
    images: list[list[list[float]]] | list[list[list[list[float]]]] | list[str] = Field(..., description=IMAGES_OUT_DOC)


class SampleResponse(ImagesResponse):
    seed: int
    latents: list[list[float]]


class ElboResponse(BaseModel):
    """Per input, in nats."""

    model: str
    elbo: list[float] = Field(..., description="reconstruction − kl: the evidence lower bound")
    reconstruction: list[float] = Field(..., description="E_q[log p(x|z)], averaged over the K samples")
    kl: list[float] = Field(..., description="KL(q(z|x) ‖ N(0, I)), closed form")
    log_likelihood: list[float] = Field(..., description="IWAE estimate of log p(x) with K samples")
    gap: list[float] = Field(..., description="log_likelihood − elbo ≥ 0: estimates KL(q(z|x) ‖ p(z|x))")


class AnomalyOptions(_ImageOptions):
    """Scores the values it is given, as /elbo; the calibration saw validation images as they are."""

    samples: int = Field(100, ge=1, description="K importance samples for the statistics (calibrated with K = 100)")
    threshold: float = Field(99.0, ge=0, le=100, description="percentile at or above which an input is an outlier")
    maps: bool = Field(False, description="also return |x − E[x|z=μ]| per pixel: where an image is unusual")


class AnomalyRequest(AnomalyOptions):
    inputs: list[Image] = Field(..., min_length=1, description=IMAGES_DOC)
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": [_EXAMPLE_IMAGE], "seed": 0}]})


class AnomalyResponse(BaseModel):
    """Per input. The score is the density of the model's own statistics (DoSE), calibrated on held-out
    in-distribution images; raw log-likelihood alone ranks many out-of-distribution inputs as likely."""

    model: str
    score: list[float] = Field(..., description="higher is more anomalous")
    percentile: list[float] = Field(..., description="share of calibration images scoring lower, 0–100")
    outlier: list[bool] = Field(..., description="percentile ≥ threshold")
    log_likelihood: list[float] = Field(..., description="IWAE estimate of log p(x), in nats (not the score)")
    statistics: dict[str, list[float]] = Field(..., description="the statistics the score is built from")
    maps: list | None = Field(None, description="|x − E[x|z=μ]| per pixel, shaped as the images (maps: true)")
