# tinymp camera example 3 of 3: live predictions with the personalised model.
#
# Restores the parameters example 2 saved (tinymp_personal.bin) into a Trainer built with the
# same plan, so the personalisation survives resets and power cycles; without the file it runs
# the pretrained model. Prints and draws the predicted class of every frame. Save this script as
# main.py on the camera to start it at every power-up. Needs the tinymp firmware (the Trainer that
# holds the personalised parameters is not in the native module tinymp.mpy).
import sensor

import tinymp
import tinymp_camera

PLAN = {"method": "tinymp", "budget": 256 * 1024}   # as in example 2


def main(frames=None, plan_options=PLAN):
    tinymp_camera.need_training(tinymp)
    model = tinymp.Model(tinymp_camera.find("model.tmpm"))
    trainer = tinymp.Trainer(model, model.plan(**plan_options))
    try:
        path = tinymp_camera.find("tinymp_personal.bin")
    except OSError:
        print("no tinymp_personal.bin: running the pretrained model")
    else:
        trainer.load(path)
        print("restored the personalised parameters from", path)
    names = model.class_names
    tinymp_camera.start_sensor(model)
    prep = tinymp_camera.Preprocess(model)
    n = 0
    while frames is None or n < frames:
        img = sensor.snapshot()
        k = trainer.predict(prep(img))
        label = names[k] if names else str(k)
        img.draw_string(4, 4, label, color=(255, 255, 255), scale=2)
        if n % 30 == 0:
            print("frame %d: %s" % (n, label))
        n += 1


if __name__ == "__main__":
    main()
