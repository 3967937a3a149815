"""The benefits of the campaigns in force: the pure quote engine (tiers, peak/off-peak, offers,
free items, multipliers). Built on the campaign files of `services.points.campaign_file`."""
