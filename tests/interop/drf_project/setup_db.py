"""Create the schema, a user and its DRF token. Run as a script by tests/support/drf.py.

Usage: python -m drf_project.setup_db USERNAME=TOKEN_KEY [USERNAME=TOKEN_KEY ...]
"""

import os
import sys


def main(users: list[tuple[str, str]]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drf_project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", verbosity=0, interactive=False)
    for username, key in users:
        user, _ = get_user_model().objects.get_or_create(username=username)
        Token.objects.filter(user=user).delete()
        Token.objects.create(user=user, key=key)


if __name__ == "__main__":
    main([tuple(arg.split("=", 1)) for arg in sys.argv[1:]])
