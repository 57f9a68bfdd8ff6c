"""Tables and figures from a sweep's stored records alone."""
