"""A checkpoint says why its projection's runner stopped on an error, and when."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("projections", "0003_paymentview_status_bank_index")]

    operations = [
        migrations.AddField(
            model_name="checkpoint", name="failure",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="checkpoint", name="failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
