"""The points rules of the campaigns in force: which awards an earn event gets (before caps and
budgets). Built on the campaign files of `services.points.campaign_file`."""
