"""Bearer tokens: each token belongs to one namespace and sees only that namespace."""
