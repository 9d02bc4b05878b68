"""Publishing trained models: model cards with plots, Hub upload and download, merged transformers export."""

from hftl.hub.card import build_card, render_card
from hftl.hub.export import export_merged
from hftl.hub.push import push_from_config, push_to_hub
from hftl.models.source import download_model  # downloading is storage: it lives with the loaders

__all__ = ["build_card", "download_model", "export_merged", "push_from_config", "push_to_hub", "render_card"]
