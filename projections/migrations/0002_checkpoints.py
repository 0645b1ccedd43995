"""`migrate` creates each projection's checkpoint, as the original setup script did."""

from django.db import migrations

PROJECTIONS = ("payment", "decline")


def create_checkpoints(apps, schema_editor):
    Checkpoint = apps.get_model("projections", "Checkpoint")
    for name in PROJECTIONS:
        Checkpoint.objects.get_or_create(name=name, defaults={"position": 0})


class Migration(migrations.Migration):
    dependencies = [("projections", "0001_read_models")]

    operations = [migrations.RunPython(create_checkpoints, migrations.RunPython.noop)]
