"""PaymentView keeps the merchant's reference (PaymentCreated, schema version 2).

Rows built before it get "": their payments were created at version 1, which had no
reference (the upcaster says so too), so no rebuild is needed.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("projections", "0005_projection_versions_and_rebuilds")]

    operations = [
        migrations.AddField(
            model_name="paymentview", name="reference",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AddIndex(
            model_name="paymentview",
            index=models.Index(condition=~models.Q(reference=""), fields=["reference"],
                               name="paymentview_reference"),
        ),
    ]
