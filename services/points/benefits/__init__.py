"""Benefits of campaigns: tiers, peak/off-peak calendar, merchants, offers, and the pure quote engine.

Import from the submodules (model, loader, quote); this package imports nothing so that the
campaign loader can use the model without an import cycle.
"""
