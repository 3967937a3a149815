"""Handlers of the events the points service consumes: each turns an event into a unit of work."""
