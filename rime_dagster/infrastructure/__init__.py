"""Infrastructure as declared resources: providers per type (providers/), plans and their apply."""
