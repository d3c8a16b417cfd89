# tinymp camera example 1 of 3: capture labelled samples with sensor.snapshot().
#
# Show the camera one class, set LABEL to its index (0 .. num_classes-1), run this script from
# OpenMV IDE; then the next class, the next LABEL, run again. Each sample is the model's int8
# input (the centre of the frame, scaled to the model's input size), appended with its label to
# tinymp_samples.bin on the SD card or the internal flash. Move the object a little between
# samples: variety is what lets personalisation generalise.
#
# Needs: the tinymp firmware (or stock firmware + tinymp.mpy + tinymp_camera.py copied to the
# camera) and the model, model.tmpm, in /rom (ROMFS), on the SD card or in /flash.
import sensor
import time

import tinymp
import tinymp_camera

LABEL = 0          # the class the camera sees now
COUNT = 20         # samples to take in this run
INTERVAL_MS = 300  # pause between samples
CLEAR = False      # True: start a new sample file (deletes earlier samples)


def main(label=LABEL, count=COUNT, interval_ms=INTERVAL_MS, clear=CLEAR):
    model = tinymp.Model(tinymp_camera.find("model.tmpm"))
    if not 0 <= label < model.num_classes:
        raise ValueError("LABEL must be in 0..%d" % (model.num_classes - 1))
    names = model.class_names
    tinymp_camera.start_sensor(model)
    prep = tinymp_camera.Preprocess(model)
    store = tinymp_camera.SampleStore(tinymp_camera.find("tinymp_samples.bin", write=True), model)
    if clear:
        store.clear()
    print("capturing %d samples of class %d (%s) into %s"
          % (count, label, names[label] if names else label, store.path))
    for i in range(count):
        img = sensor.snapshot()
        store.append(prep(img), label)
        img.draw_string(4, 4, "class %d: %d/%d" % (label, i + 1, count), color=(255, 255, 255))
        time.sleep(interval_ms / 1000)
    counts = store.counts(model.num_classes)
    print("samples per class:", counts, "total", sum(counts))


if __name__ == "__main__":
    main()
