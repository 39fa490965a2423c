"""The granularity search: space, evolution, fitnesses, checkpoint."""
