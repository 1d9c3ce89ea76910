from django.apps import AppConfig


class ChergaConfig(AppConfig):
    name = "cherga.django"
    # The package is called "django"; the label must not be.
    label = "cherga"
    verbose_name = "cherga"
    default_auto_field = "django.db.models.BigAutoField"
