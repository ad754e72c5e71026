# Custom Beam SDK container for running the prepare/perturb jobs on Dataflow, Flink or
# any portable runner: same Beam version as requirements.txt, the audio tools, and this
# project installed. Build and push it, then pass
#   --sdk_container_image=REGISTRY/tagkit-beam:TAG --sdk_location=container
FROM apache/beam_python3.11_sdk:2.77.0

RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg sox libsox-fmt-mp3 rubberband-cli \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tagkit
COPY requirements.txt ./
# torch from the CPU wheel index first: the default wheel drags in the CUDA stack.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --force-reinstall --no-deps "$(grep -E '^soundfile==' requirements.txt)"
COPY . .
RUN pip install --no-cache-dir --no-deps -e .

ENTRYPOINT ["/opt/apache/beam/boot"]
