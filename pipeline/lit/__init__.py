"""Lightning predict modules and the multi-device runner of the heavy stages."""
