"""NIFF models: conversion rules and the registry."""

from .build import BuilderError, build_model
from .config import ModelConfig
from .convert import ConversionError, ConversionReport, niff_layers, record_shapes, to_niff, to_separated
from .registry import UnknownModelError, create_model, list_models, parse_name

__all__ = [
    "BuilderError",
    "ConversionError",
    "ConversionReport",
    "ModelConfig",
    "UnknownModelError",
    "build_model",
    "create_model",
    "list_models",
    "niff_layers",
    "parse_name",
    "record_shapes",
    "to_niff",
    "to_separated",
]
