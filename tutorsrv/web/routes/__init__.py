"""HTTP routes of the web role, one module per resource."""
