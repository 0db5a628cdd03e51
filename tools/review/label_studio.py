"""Label Studio import tasks for the suspects (review_labels --label-studio): the thumbnail,
the sample's names and the suggested label as a pre-annotation, and the labeling config."""
from pathlib import Path

from pipeline import safe_io
from pipeline.fixes import drop_choice

LS_CHOICE = "label"   # the Label Studio Choices tag (from_name) and its Image tag (to_name)
LS_IMAGE = "image"


def label_studio_tasks(rows: dict, classes: list[str], prefix: str, model: str) -> list[dict]:
    """Import tasks (Label Studio's basic JSON task format): data.image is the thumbnail's URL,
    data carries key/index/given so an export names its samples, and `predictions` holds the
    suggested label as a `choices` result (shown as a pre-annotation)."""
    tasks = []
    for n in range(len(rows["index"])):
        pred = rows["pp"][n] if rows["pp"][n] >= 0 else rows["cp"][n]
        task = {"data": {LS_IMAGE: prefix + rows["thumb"][n], "key": rows["key"][n], "index": rows["index"][n],
                         "given": classes[rows["given"][n]], "rank": rows["rank"][n], "score": rows["score"][n],
                         "source": rows["source"][n]}}
        if 0 <= pred < len(classes):
            task["predictions"] = [{"model_version": model, "score": rows["score"][n], "result": [
                {"from_name": LS_CHOICE, "to_name": LS_IMAGE, "type": "choices",
                 "value": {"choices": [classes[pred]]}}]}]
        tasks.append(task)
    return tasks


def label_studio_config(classes: list[str]) -> str:
    """The labeling config the tasks expect: one Choices over the classes, plus "drop" ("(drop)"
    when a class is named drop: pipeline.fixes reads the two apart)."""
    from xml.sax.saxutils import quoteattr
    choices = "".join(f"    <Choice value={quoteattr(c)}/>\n" for c in [*classes, drop_choice(classes)])
    return (f'<View>\n  <Image name="{LS_IMAGE}" value="${LS_IMAGE}"/>\n  <Text name="given" value="given: $given"/>\n'
            f'  <Choices name="{LS_CHOICE}" toName="{LS_IMAGE}" choice="single" showInline="true">\n{choices}'
            f'  </Choices>\n</View>\n')


def write_label_studio(path: Path, rows: dict, classes: list[str], prefix: str, model: str) -> None:
    safe_io.out_dir(path.parent, "--label-studio folder")
    safe_io.write_json(path, label_studio_tasks(rows, classes, prefix, model))
    safe_io.write_text(path.parent / "label_studio_config.xml", label_studio_config(classes))
