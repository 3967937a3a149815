"""A campaign file (`rules/campaigns/*.yaml`) as ops write it: the model of its points and
benefits sections, and the loader that parses, checks and locates every error. The lowest layer
of the points service: it imports nothing else of the service."""
