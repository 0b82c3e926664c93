"""provisioning: connectors that grant and revoke access on real targets."""
