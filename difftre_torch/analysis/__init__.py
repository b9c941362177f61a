"""Analyses of a model beyond the loss: binding curves, the pair-correction ceiling."""
