"""Projection versions on the checkpoints, and the state of a blue/green rebuild."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("projections", "0004_checkpoint_failure")]

    operations = [
        migrations.AddField(
            model_name="checkpoint", name="version",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="checkpoint", name="rebuilt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="Rebuild",
            fields=[
                ("name", models.CharField(max_length=50, primary_key=True, serialize=False)),
                ("version", models.PositiveIntegerField(
                    help_text="the projection version being built")),
                ("position", models.BigIntegerField(default=0,
                                                    help_text="the shadow's checkpoint")),
                ("started_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"ordering": ["name"]},
        ),
    ]
