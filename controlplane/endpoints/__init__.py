"""Endpoints: the HF Inference Endpoints v2 resource, its service layer and REST routes."""
