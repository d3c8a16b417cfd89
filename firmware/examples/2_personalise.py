# tinymp camera example 2 of 3: personalise the model on the captured samples, on the camera.
#
# Trains with the method `tinymp` (gradient condensing and alternant partial updates;
# docs/TRAINING.md) inside a fixed RAM budget, prints the loss and the accuracy on the samples
# after each epoch, and saves the personalised parameters to tinymp_personal.bin (only the
# trained parameters, CRC-checked).
# Example 3 restores them, also after a reset or power cycle. Needs the tinymp firmware (training
# is not in the native module tinymp.mpy).
import tinymp
import tinymp_camera

EPOCHS = 5
LR = 0.01
BUDGET = 256 * 1024    # bytes of RAM for the whole training step (the OpenMV Cam H7's budget)
PLAN = {"method": "tinymp", "budget": BUDGET}   # example 3 must use the same plan


def accuracy(predict, store):
    correct = total = 0
    for x, y in store:
        correct += predict(x) == y
        total += 1
    return correct / total if total else 0.0


def main(epochs=EPOCHS, lr=LR, plan_options=PLAN):
    tinymp_camera.need_training(tinymp)
    model = tinymp.Model(tinymp_camera.find("model.tmpm"))
    store = tinymp_camera.SampleStore(tinymp_camera.find("tinymp_samples.bin"), model)
    print("samples per class:", store.counts(model.num_classes))
    plan = model.plan(**plan_options)
    print(plan.describe())
    trainer = tinymp.Trainer(model, plan, lr=lr, seed=1)
    print("pretrained accuracy on the samples: %.1f%%" % (100 * accuracy(model.predict, store)))
    for epoch in range(epochs):
        loss = n = 0
        for i in tinymp_camera.order(len(store), seed=epoch + 1):   # a new order every epoch
            x, y = store.read(i)
            loss += trainer.step(x, y)
            n += 1
        print("epoch %d: mean loss %.4f, accuracy %.1f%%"
              % (epoch + 1, loss / max(n, 1), 100 * accuracy(trainer.predict, store)))
    path = tinymp_camera.find("tinymp_personal.bin", write=True)
    trainer.save(path)
    print("saved the personalised parameters to", path)
    return trainer


if __name__ == "__main__":
    main()
