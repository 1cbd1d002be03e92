"""Model families. Each is a :class:`~recarena.models.base.RecommenderModule` built by ``model=<name>``."""
